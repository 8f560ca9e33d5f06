"""The epochs a run trains, from its config (a resolved one, or a run folder's configs.yaml as read back)."""
from __future__ import annotations


def final_epoch(cfg: dict) -> int:
    """The last epoch a run trains: stop_epoch (stop_epoch_noisy under simulated noise) when set and earlier, else
    num_epoch.  The learning-rate schedule spans num_epoch either way (3RTPR's rebuild stops part-way down its
    cosine).  A config saved before these options has none of them: num_epoch."""
    stop = cfg.get("stop_epoch", 0)
    if cfg.get("noisy_rate", 0) > 0 and cfg.get("stop_epoch_noisy", 0):
        stop = cfg["stop_epoch_noisy"]
    return min(stop, cfg["num_epoch"]) if stop else cfg["num_epoch"]
