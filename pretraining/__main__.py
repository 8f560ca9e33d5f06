"""Build the synthetic-pretrained CLIP of a training config ahead of its run (main.py builds it on first use):

    python -m pretraining --config configs/synth.yaml

Prints the file's path.
"""
from __future__ import annotations

import argparse

from configs import parse_args
from model.clip import SYNTHETIC, random_clip_config, synthetic_clip_file
from utils.logger import setup_logger

from .synthetic_clip import ensure_for_run


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(prog="python -m pretraining", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="a training config whose clip_arch, img_size, stride_size "
                                                        "and text_length the CLIP is built with")
    args = parser.parse_args(argv)
    setup_logger(None)
    cfg = parse_args(["--config", args.config, "--pretrain_choice", SYNTHETIC])
    ensure_for_run(cfg)
    path = synthetic_clip_file(random_clip_config(cfg.clip_arch, cfg.img_size, cfg.stride_size, cfg.text_length))
    print(path)
    return path


if __name__ == "__main__":
    main()
