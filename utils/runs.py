"""Reading a finished run folder back: its config, its data and its trained models (test.py, THI, tools)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from datasets import DatasetError, PersonDataset, build_dataset
from datasets.loaders import build_eval_loaders
from model import build_model
from .checkpoint import load_checkpoint, load_model_states
from .device import resolve_device, resolve_precision
from .evaluator import Evaluator
from .options import load_yaml, resolve


@dataclass
class Run:
    cfg: dict
    dataset: PersonDataset
    device: torch.device
    dtype: torch.dtype | None
    models: list | None = None     # filled by load_weights

    def evaluator(self, split_name: str = "test") -> Evaluator:
        split = self.dataset.val if split_name == "val" else self.dataset.test
        if split is None:
            raise SystemExit(f"{self.cfg.dataset_name} has no {split_name} split")
        loaders = build_eval_loaders(split, image_size=tuple(self.cfg.img_size), text_length=self.cfg.text_length,
                                     batch_size=self.cfg.test_batch_size, num_workers=self.cfg.num_workers)
        return Evaluator(split, *loaders, device=self.device, dtype=self.dtype)

    def load_weights(self, checkpoint: str = "best") -> dict:
        """Load best / last / a .pth path into the run's models (built on first use); returns the checkpoint."""
        path = checkpoint if checkpoint.endswith(".pth") else os.path.join(self.cfg.run_dir, f"{checkpoint}.pth")
        try:
            ckpt = load_checkpoint(path)
            if self.models is None:
                self.models = build_models(self.cfg, ckpt, self.dataset.num_train_pids, self.device)
            load_model_states(self.models, ckpt["models"], path)
        except (FileNotFoundError, ValueError) as e:
            raise SystemExit(str(e)) from None
        for m in self.models:
            m.eval()
        return ckpt


def build_models(cfg, ckpt: dict, num_classes: int, device) -> list:
    """The run's models with random weights, shaped like the checkpoint's: the CLIP file is not needed."""
    arch = {k: v for k, v in ckpt.get("clip_config", {}).items() if k not in ("image_size", "stride", "context_length")}
    cfg = resolve({"pretrain_choice": "random", "clip_arch": arch}, dict(cfg))
    return [build_model(cfg, num_classes).to(device) for _ in range(2 if cfg.twin else 1)]


def load_run(run_dir: str, **overrides) -> Run:
    """A run folder's saved config (with overrides such as root_dir, device) and dataset, checked."""
    config_file = os.path.join(run_dir, "configs.yaml")
    if not os.path.isfile(config_file):
        raise SystemExit(f"{config_file} not found: expected a run folder written by main.py")
    cfg = resolve({k: v for k, v in overrides.items() if v is not None}, load_yaml(config_file))
    cfg.run_dir = run_dir
    device = resolve_device(cfg.device)
    try:
        dataset = build_dataset(cfg.dataset_name, cfg.root_dir, cfg.anno_path or None)
    except DatasetError as e:
        raise SystemExit(f"{e}\n(the run's data is read with its saved config; pass --root_dir / --anno_path "
                         "if the data moved)") from None
    return Run(cfg, dataset, device, resolve_precision(cfg.precision, device))
