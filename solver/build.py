"""Assembly: a resolved config (configs/) -> the engine of its training method with its parts (models, data,
hooks).  It joins datasets/, model/, evaluation/ and the rest of solver/; configs/ sits above it and is not imported
here (a config arrives resolved)."""
from __future__ import annotations

import logging

import torch

from evaluation.evaluator import Evaluator
from model import build_model
from utils import distributed as dist
from utils import faults
from utils.device import resolve_device, resolve_precision
from utils.seed import set_seed

from .data import TrainData
from .engine import Engine
from .hooks import Checkpoints, Evaluation, FaultInjection, MetricsLog
from .methods import METHODS

log = logging.getLogger("reid")


def build_models(cfg, num_classes: int, device: torch.device) -> list:
    """One model, or two (reciprocal twins) initialised independently."""
    models = []
    for k in range(2 if cfg.twin else 1):
        torch.manual_seed(cfg.seed + k)  # twins: independently initialised heads
        models.append(build_model(cfg, num_classes).to(device))
    return models


def build_engine(cfg, run_dir: str | None = None, resume_from: tuple[dict, str] | None = None,
                 num_classes: int | None = None) -> Engine:
    """The engine of cfg.method with its parts: models, data and hooks (evaluation, checkpoints, metrics log)
    in `run_dir`.  num_classes instead of a run folder: models and optimisers alone, no data (the benchmarks).
    resume_from: (checkpoint, its path) to continue from, as utils.checkpoint.load_latest reads it."""
    method = METHODS[cfg.method]
    device = dist.init_distributed(cfg.device) or resolve_device(cfg.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    dtype = resolve_precision(cfg.precision, device)
    set_seed(cfg.seed)
    data, hooks = None, []
    if num_classes is None:
        data = TrainData(cfg)
        num_classes = data.num_classes
    models = build_models(cfg, num_classes, device)
    log.info("method %s: %d model(s), weighting %s; primary loss %s (what the division listens to and the RDA term "
             "trains)", cfg.method, len(models), cfg.weighting if cfg.division else "none (division: false)",
             models[0].primary_loss)
    if data is not None:
        data.build_loaders(num_views=len(models))
        evaluator = Evaluator(data.eval_split, *data.eval_loaders, device=device, dtype=dtype, rows=cfg.eval_rows)
        hooks = [Evaluation(evaluator), Checkpoints(run_dir), MetricsLog(run_dir)]
        if faults.requested():          # the tests' (utils/faults.py)
            hooks.append(FaultInjection())
    engine = method(cfg, models, device, dtype, data=data, hooks=hooks, run_dir=run_dir)
    if resume_from is not None:
        engine.resume(*resume_from)
    return engine
