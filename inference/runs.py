"""Reading trained models back with their config and data (test.py, THI, retrieve.py): from a run folder, or from
checkpoint files (published layouts included, model/published.py) plus a config file.  The one place that turns
a run folder into models: retrieval (inference/retrieval_index.py) reads its runs here too, without the data."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from configs import load_run_config, load_yaml, resolve
from datasets import DatasetError, PersonDataset, build_dataset
from datasets.loaders import build_eval_loaders
from model import build_model
from model.published import CheckpointMismatch, load_models
from utils.checkpoint import load_checkpoint, load_model_states
from utils.device import resolve_device, resolve_precision
from evaluation.evaluator import Evaluator


@dataclass
class Run:
    cfg: dict
    dataset: PersonDataset | None  # None: read without its data (load_run(with_data=False)), for inference only
    device: torch.device
    dtype: torch.dtype | None
    models: list | None = None     # filled by load_weights
    files: list[str] | None = None # checkpoint files given with a config instead of a run folder
    reports: list | None = None    # model.published.LoadReport per file: what was loaded, what not and why

    def evaluator(self, split_name: str = "test") -> Evaluator:
        if self.dataset is None:
            raise ValueError("this run was read without its data (load_run(with_data=False)): nothing to evaluate")
        split = self.dataset.val if split_name == "val" else self.dataset.test
        if split is None:
            raise SystemExit(f"{self.cfg.dataset_name} has no {split_name} split")
        loaders = build_eval_loaders(split, image_size=tuple(self.cfg.img_size), text_length=self.cfg.text_length,
                                     batch_size=self.cfg.test_batch_size, num_workers=self.cfg.num_workers,
                                     image_cache=self.cfg.image_cache, cache_dir=self.cfg.image_cache_dir or None)
        return Evaluator(split, *loaders, device=self.device, dtype=self.dtype, rows=self.cfg.eval_rows)

    def checkpoint_path(self, checkpoint: str = "best") -> str:
        """best / last (the run folder's best.pth / last.pth) or a .pth path, as given."""
        return checkpoint if checkpoint.endswith(".pth") else os.path.join(self.cfg.run_dir, f"{checkpoint}.pth")

    def load_weights(self, checkpoint: str = "best") -> dict:
        """Load best / last / a .pth path into the run's models (built on first use); returns the checkpoint.

        A Run made from checkpoint files (load_checkpoint_files) has one set of weights: `checkpoint` is ignored.
        A Run read without its data gets models without their loss modules: only the ID loss has weights, sized
        by the training identities that are not read, and inference never uses them.  Every other key is still
        loaded strictly.
        """
        if self.files is not None:
            return self._load_files()
        path = self.checkpoint_path(checkpoint)
        try:
            ckpt = load_checkpoint(path)
            states = ckpt["models"]
            if self.dataset is None:
                states = [{k: v for k, v in s.items() if not k.startswith("losses.")} for s in states]
            if self.models is None:
                self.models = build_models(self.cfg, ckpt, self.dataset.num_train_pids if self.dataset else 1,
                                           self.device)
                if self.dataset is None:
                    for m in self.models:
                        m.losses = torch.nn.ModuleDict()
            load_model_states(self.models, states, path)
        except (FileNotFoundError, ValueError) as e:
            raise SystemExit(str(e)) from None
        for m in self.models:
            m.eval()
        return ckpt

    def _load_files(self) -> dict:
        if self.models is None:
            try:
                self.models, self.reports = load_models(
                    self.files, self.cfg, lambda cfg, arch: random_model(cfg, arch, self.dataset.num_train_pids),
                    self.device)
            except (FileNotFoundError, CheckpointMismatch, ValueError) as e:   # each names the file
                raise SystemExit(str(e)) from None
            if self.cfg.twin and len(self.models) == 1:
                self.reports[0].notes.append("the config asks for twins; one file holds one model, evaluated alone "
                                             "(give two files for twins)")
            self.cfg.twin = len(self.models) == 2
        for m in self.models:
            m.eval()
        return {"epoch": ", ".join(str(r.epoch) for r in self.reports), "files": self.files}


def random_model(cfg, clip_arch: dict | None, num_classes: int):
    """A model with random weights and the given CLIP architecture: no CLIP file (nor ReID-pretrained file) read."""
    loss_names = "+".join(p for p in cfg.loss_names.split("+") if p != "pre") or "TAL"
    cfg = resolve({"pretrain_choice": "random", "pretrain_path": "", "clip_arch": clip_arch or {},
                   "loss_names": loss_names}, dict(cfg), layers=[])
    return build_model(cfg, num_classes)


def build_models(cfg, ckpt: dict, num_classes: int, device) -> list:
    """The run's models with random weights, shaped like the checkpoint's: the CLIP file is not needed."""
    arch = {k: v for k, v in ckpt.get("clip_config", {}).items() if k not in ("image_size", "stride", "context_length")}
    return [random_model(cfg, arch, num_classes).to(device) for _ in range(2 if cfg.twin else 1)]


def _read_dataset(cfg, hint: str) -> PersonDataset:
    try:
        return build_dataset(cfg.dataset_name, cfg.root_dir, cfg.anno_path or None)
    except DatasetError as e:
        raise SystemExit(f"{e}\n({hint})") from None


def load_checkpoint_files(files: list[str], config_file: str, out_dir: str = "", **overrides) -> Run:
    """Weights from checkpoint files (RDE / ICL, IRRA-family, MLLM4Text-ReID or main.py layouts; two files make
    twins) with the options of `config_file` and `overrides`: no run folder needed.  Models load on load_weights."""
    if not 1 <= len(files) <= 2:
        raise SystemExit(f"give one checkpoint file, or two for twins; got {len(files)}")
    layers = []
    cfg = resolve({k: v for k, v in overrides.items() if v is not None}, load_yaml(config_file, layers),
                  f"options of {config_file}", layers)
    cfg.run_dir = out_dir
    device = resolve_device(cfg.device)
    dataset = _read_dataset(cfg, "pass --root_dir / --anno_path to point at the data")
    return Run(cfg, dataset, device, resolve_precision(cfg.precision, device), files=list(files))


def load_run(run_dir: str, with_data: bool = True, **overrides) -> Run:
    """A run folder's saved config (with overrides such as root_dir, device) and dataset, checked.

    with_data=False reads no dataset (searching one's own photos needs none): the Run can load its weights and
    encode, not evaluate."""
    config_file = os.path.join(run_dir, "configs.yaml")
    if not os.path.isfile(config_file):
        raise SystemExit(f"{config_file} not found: expected a run folder written by main.py")
    cfg = resolve({k: v for k, v in overrides.items() if v is not None}, load_run_config(config_file),
                  f"options of {config_file}", layers=[])
    cfg.run_dir = run_dir
    device = resolve_device(cfg.device)
    dataset = _read_dataset(cfg, "the run's data is read with its saved config; pass --root_dir / --anno_path "
                                 "if the data moved") if with_data else None
    return Run(cfg, dataset, device, resolve_precision(cfg.precision, device))
