"""Pretraining before a run: the synthetic world's stand-in for OpenAI's web pretraining (``pretrain_choice:
synthetic``), a CLIP trained with CLIP's own contrastive loss on synthetic people that SYNTH-PEDES never holds.

    synthetic_clip.py   the recipe, the training loop, and the file kept per architecture (a lock, the cache)
    __main__.py         ``python -m pretraining --config configs/synth.yaml``: build it ahead of a run

main.py builds it on first use (`ensure_for_run`) before it assembles the run (solver/build.py), which then loads it
as any CLIP file (model/clip/synthetic.py says where it is kept).
"""
from .synthetic_clip import RECIPE, ensure_for_run, ensure_synthetic_clip, train_synthetic_clip

__all__ = ["RECIPE", "ensure_for_run", "ensure_synthetic_clip", "train_synthetic_clip"]
