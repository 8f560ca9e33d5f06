"""Training methods, one file each, chosen by name with ``method:`` (default rde).

A method is an Engine subclass (solver/engine.py) registered here.  It overrides the points it changes
(train_step, division_signals, sample_weights, train_mode), may set other options' defaults (``defaults``,
which the config file and the command line still override) and may declare options of its own
(``options = {name: Option}``, listed by ``python main.py --help``).  `build_engine` gives it its parts.
"""
from __future__ import annotations

import logging

import torch

from utils import distributed as dist
from utils.device import resolve_device, resolve_precision
from utils.registry import Registry
from utils.seed import set_seed

from ..engine import Engine

log = logging.getLogger("reid")


def _method_problems(cls) -> list[str]:
    if not (isinstance(cls, type) and issubclass(cls, Engine)):
        return ["a method is a solver.engine.Engine subclass"]
    if not isinstance(cls.defaults, dict):
        return ["defaults must be {option: value}"]
    return []


METHODS = Registry("training method", "solver/methods/", _method_problems)
register_method = METHODS.register


def build_models(cfg, num_classes: int, device: torch.device) -> list:
    """One model, or two (reciprocal twins) initialised independently."""
    from model import build_model
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
    from evaluation.evaluator import Evaluator
    from ..data import TrainData
    from ..hooks import Checkpoints, Evaluation, MetricsLog
    from ..synthetic_clip import ensure_for_run

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
    ensure_for_run(cfg, device)        # pretrain_choice: synthetic is built on first use
    models = build_models(cfg, num_classes, device)
    log.info("method %s: %d model(s); primary loss %s (what the division listens to and the RDA term trains)",
             cfg.method, len(models), models[0].primary_loss)
    if data is not None:
        data.build_loaders(num_views=len(models))
        evaluator = Evaluator(data.eval_split, *data.eval_loaders, device=device, dtype=dtype)
        hooks = [Evaluation(evaluator, cfg.eval_period), Checkpoints(run_dir), MetricsLog(run_dir)]
    engine = method(cfg, models, device, dtype, data=data, hooks=hooks, run_dir=run_dir)
    if resume_from is not None:
        engine.resume(*resume_from)
    return engine


from . import co_teaching, rde, recommended, soft_clean, twins  # noqa: E402,F401  (registration)
