"""Train a text-to-image person re-id model.

    python main.py --config configs/demo.yaml                  # synthetic data, CPU, a few minutes
    python main.py --config configs/rde/cuhk.yaml --root_dir /data   # RDE on CUHK-PEDES
    python main.py --resume logs/CUHK-PEDES/20260101_120000_RDE      # continue a killed run
    torchrun --nproc_per_node 4 main.py --config configs/rde/cuhk.yaml   # 4 GPUs, global batch 4 x batch_size

--trust_checkpoint loads a --pretrain_path / --pretrain_choice / --resume file that holds objects other than tensors
and plain data (their code runs; only for files you trust).  SIGTERM / Ctrl-C stop at the next step with a
checkpoint that --resume continues; a NaN / inf loss stops at once (README, Safety).
"""
import os
import sys
import time

from configs import config_conflicts, current_names, parse_args
from datasets import DatasetError
from utils.images import ImageDecodeError
from solver.faults import Interrupted, NonFiniteLoss
from solver.build import build_engine
from pretraining import ensure_for_run
from utils import distributed as dist
from utils.checkpoint import DiskFullError, load_latest
from utils.device import resolve_device
from utils.logger import setup_logger
from utils.options import save_config
from utils.run_folder import RunFolder, RunFolderError, new_folder
from utils.safe_load import FileRefused, command


def make_run_dir(cfg) -> tuple[str, bool | None]:
    """(the run folder, True when made here): --run_dir as given, else a new OUTPUT_DIR/DATASET/TIME_NAME (with a
    suffix when a training of that name started in the same second)."""
    if cfg.run_dir:
        return cfg.run_dir, None
    stamp = time.strftime("%Y%m%d_%H%M%S")
    return new_folder(os.path.join(cfg.output_dir, cfg.dataset_name, f"{stamp}_{cfg.name}")), True


def checkpoint_to_resume(cfg, log):
    """(checkpoint, path) of the run to continue, or None when it has not finished an epoch yet (it then starts
    at epoch 1 with its saved config).  A configs.yaml edited since the checkpoint was written is refused."""
    checkpoint, path = load_latest(cfg.run_dir, log)
    if checkpoint is None:
        log.info("%s has no checkpoint yet: training it from epoch 1 with its saved configs.yaml", cfg.run_dir)
        return None
    trained = current_names(checkpoint["config"])    # a checkpoint older than a rename (its configs.yaml warned)
    edited = config_conflicts(trained, {k: v for k, v in cfg.items() if k in trained})
    if edited:
        raise SystemExit(f"{cfg.run_dir}/configs.yaml differs from the config {os.path.basename(path)} was trained "
                         f"with: {'; '.join(edited)} (run = the checkpoint's value); put the checkpoint's values "
                         "back, or start a new run")
    return checkpoint, path


def main(argv=None) -> dict:
    """Train as the command line does; a stop signal ends it after its checkpoint with solver.faults.Interrupted
    (a KeyboardInterrupt: the caller stops too), which the command line turns into the signal's exit status."""
    with command(list(sys.argv[1:] if argv is None else argv)) as argv:
        return train(argv)


def train(argv: list[str]) -> dict:
    cfg = parse_args(argv)
    device = dist.init_distributed(cfg.device) or resolve_device(cfg.device)     # under torchrun: this rank's
    run_dir, created = make_run_dir(cfg) if dist.is_main() else (None, None)
    cfg.run_dir = dist.broadcast_object(run_dir)            # one folder, named by rank 0
    folder = None
    if dist.is_main():
        try:
            folder = RunFolder(cfg.run_dir, resume=bool(cfg.resume), overwrite=cfg.overwrite, created=created)
        except RunFolderError as e:
            raise SystemExit(str(e)) from None
        if not cfg.resume:
            save_config(cfg, os.path.join(cfg.run_dir, "configs.yaml"))
    dist.barrier()
    log = setup_logger(cfg.run_dir if dist.is_main() else None, quiet=not dist.is_main())
    log.info("run folder %s", cfg.run_dir)
    try:
        ensure_for_run(cfg, device)        # pretrain_choice: synthetic is built on first use
        engine = build_engine(cfg, cfg.run_dir, checkpoint_to_resume(cfg, log) if cfg.resume else None)
    except (DatasetError, FileRefused, SystemExit) as e:
        log.error("%s", e)
        if folder is not None:
            folder.remove_if_unused()        # a failed start leaves no empty run folder behind
        raise SystemExit(e.code if isinstance(e, SystemExit) else 2) from None
    try:
        return engine.run()
    except Interrupted as stop:      # preempted (SIGTERM), Ctrl-C, a torchrun process that died: one line,
        if stop.reports_here:        # then the caller stops too; rank 0 says it, or the first process left
            (log.info if dist.is_main() else log.warning)("%s", stop.message(engine.last_saved, cfg.run_dir))
        raise
    except NonFiniteLoss as e:
        log.error("%s", e.message(engine.last_saved, cfg.run_dir))
        raise SystemExit(3) from None
    except DiskFullError as e:
        log.error("%s, then continue with: %s", e.strerror, dist.resume_command(cfg.run_dir))
        raise SystemExit(2) from None
    except ImageDecodeError as e:
        # from a loader worker the message carries the worker's traceback, whose last line names the image
        line = "cannot decode image" + str(e).rsplit("cannot decode image", 1)[-1].splitlines()[0]
        log.error("%s\nreplace or remove that image (python -m datasets.check --decode lists them all), then "
                  "continue with: %s", line, dist.resume_command(cfg.run_dir))
        raise SystemExit(2) from None
    finally:
        if folder is not None:
            folder.release()


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except Interrupted as stop:      # its line is logged: the exit status of the signal, no traceback
        raise SystemExit(stop.exit_status) from None
