"""3RTPR's reciprocal twins as its authors' rebuilt code trains them (github.com/ADNgrup/TPR-UET, commit 88a49fb,
3RTPR/processor/, the "base + ALR" commands of scripts-slurm/train.sh; configs/3rtpr_release):

- the division reads one twin drawn at random each epoch (``division_twin: random``; ``both`` is the rebuild's
  --ccd-a), scored on the other twin's augmented view; the same pass gives ALR its cosines (the drawn twin's);
- nothing is dropped: the rebuild draws its consensus coin and then sets every pair's label to 1, so only ALR's
  weights (weighting: alr_release) reach its loss; here no coin is drawn;
- the division starts after ``division_warmup_epochs`` (the rebuild's ccd.warmup_epochs, in its unreleased config);
- evaluation at epoch 1, then every eval_period epochs after ``eval_after`` (the rebuild: 10, 5 on RSTPReid).

Each of the twins' division is logged: the twin read, its clean votes (against the truth under simulated noise),
mu and the weights both twins then train with.
"""
import logging

import numpy as np
import torch

from utils.options import AT_LEAST_0, OneOf, Option

from ..division import Division, division_quality, model_prefix
from ..division_reads import READS
from ..engine import Engine
from . import register_method

log = logging.getLogger("reid")


@register_method("twins_release")
class ReleasedReciprocalTwins(Engine):
    defaults = {"twin": True, "weighting": "alr_release"}
    options = {
        "division_twin": Option("random", "twins_release: the twins the division reads each epoch: random (one, "
                                          "drawn from (seed, epoch), as 3RTPR's rebuild) or both (its --ccd-a: one "
                                          "mixture per twin)", OneOf("random", "both")),
        "division_warmup_epochs": Option(0, "twins_release: epochs trained on every pair at weight 1 before the "
                                            "first division (the rebuild's ccd.warmup_epochs, which its release "
                                            "does not give; 0: divide from epoch 1, as RDE)", AT_LEAST_0),
        "eval_after": Option(0, "twins_release: besides epoch 1 (and the last), evaluate every eval_period epochs "
                                "after this one (the rebuild: 10, RSTPReid 5)", AT_LEAST_0),
    }

    def drawn_twins(self, epoch: int) -> list[int]:
        """The twins whose division this epoch reads: both, or one drawn from (seed, epoch)."""
        if self.cfg.division_twin == "both" or len(self.models) == 1:
            return list(range(len(self.models)))
        return [int(np.random.default_rng([self.cfg.seed, epoch]).integers(len(self.models)))]

    def division_signals(self, epoch: int):
        return READS[self.cfg.division_read](self, epoch, self.drawn_twins(epoch))

    def division_notes(self, division: Division) -> tuple[str, dict]:
        mu = self.weighting.mu(division) if hasattr(self.weighting, "mu") else None    # the ALR rules' mu
        is_clean = self.data.is_clean if self.data is not None else None     # the truth, under simulated noise
        notes, extra = [], {} if mu is None else {"mu": float(mu)}
        for name, vote, k in zip(division.signals, division.votes, division.owners):   # a twin's fused SDM each
            other = model_prefix((k + 1) % division.models, division.models).rstrip("/")
            quality = division_quality(torch.as_tensor(vote, dtype=torch.float32), is_clean)
            extra[f"{name}/clean_votes"] = quality["kept"]
            said = f"{name}" + (f" (on {other}'s view)" if other else "") + f" votes {quality['kept']} clean"
            if is_clean is not None:
                extra[f"{name}/vote_noise_precision"] = quality["noise_precision"]
                extra[f"{name}/vote_noise_recall"] = quality["noise_recall"]
                said += f" (noisy votes: precision {quality['noise_precision']:.1f}% recall " \
                        f"{quality['noise_recall']:.1f}%)"
            notes.append(said)
        return "; ".join(notes) + ("" if mu is None else f"; ALR mu {float(mu):.4f}") + "; ", extra

    def divide(self, epoch: int) -> dict:
        if epoch > self.cfg.division_warmup_epochs:
            return super().divide(epoch)
        self.weights = torch.ones(len(self.data.records))
        log.info("epoch %d: every pair weighs 1, the division starts after epoch %d (division_warmup_epochs)",
                 epoch, self.cfg.division_warmup_epochs)
        return {}

    def evaluates(self, epoch: int) -> bool:
        return epoch == 1 or epoch == self.last_epoch or (
            epoch > self.cfg.eval_after and epoch % self.cfg.eval_period == 0)
