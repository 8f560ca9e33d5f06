"""Train a text-to-image person re-id model.

    python main.py --config configs/demo.yaml                  # synthetic data, CPU, a few minutes
    python main.py --config configs/rde/cuhk.yaml --root_dir /data   # RDE on CUHK-PEDES
    python main.py --resume logs/CUHK-PEDES/20260101_120000_RDE      # continue a killed run
    torchrun --nproc_per_node 4 main.py --config configs/rde/cuhk.yaml   # 4 GPUs, global batch 4 x batch_size
"""
import os
import sys
import time

from datasets import DatasetError
from datasets.loaders import ImageDecodeError
from solver.engine import Trainer
from utils import distributed as dist
from utils.logger import setup_logger
from utils.options import parse_args, save_config


def make_run_dir(cfg) -> str:
    if cfg.run_dir:
        return cfg.run_dir
    stamp = time.strftime("%Y%m%d_%H%M%S")
    return os.path.join(cfg.output_dir, cfg.dataset_name, f"{stamp}_{cfg.name}")


def main(argv=None) -> dict:
    cfg = parse_args(argv)
    dist.init_distributed(cfg.device)                       # under torchrun; nothing on one process
    cfg.run_dir = dist.broadcast_object(make_run_dir(cfg))  # one folder, named by rank 0
    if dist.is_main():
        os.makedirs(cfg.run_dir, exist_ok=True)
        if not cfg.resume:
            save_config(cfg, os.path.join(cfg.run_dir, "configs.yaml"))
    dist.barrier()
    log = setup_logger(cfg.run_dir if dist.is_main() else None, quiet=not dist.is_main())
    log.info("run folder %s", cfg.run_dir)
    try:
        trainer = Trainer(cfg, cfg.run_dir)
    except DatasetError as e:
        log.error("%s", e)
        raise SystemExit(2) from None
    try:
        return trainer.run()
    except ImageDecodeError as e:
        # from a loader worker the message carries the worker's traceback, whose last line names the image
        line = "cannot decode image" + str(e).rsplit("cannot decode image", 1)[-1].splitlines()[0]
        log.error("%s\nreplace or remove that image (python -m datasets.check --decode lists them all), then "
                  "continue with: python main.py --resume %s", line, cfg.run_dir)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main(sys.argv[1:])
