"""DivideMix's schedule around the co-divide (Li et al., ICLR 2020; without its MixMatch step): twins trained on
every pair at weight 1 for ``dividemix_warmup`` epochs, as DivideMix warms up before its first division, then each
on its partner's soft division (weighting: co_divide, solver/weighting/co_divide.py), read like a test set."""
import logging

import torch

from utils.options import AT_LEAST_0, Option

from ..engine import Engine
from . import register_method

log = logging.getLogger("reid")


@register_method("dividemix")
class DivideMix(Engine):
    defaults = {"twin": True, "weighting": "co_divide", "division_read": "clean"}
    options = {"dividemix_warmup": Option(1, "dividemix: epochs trained on every pair at weight 1 before the first "
                                             "co-divide (DivideMix's warm-up)", AT_LEAST_0)}

    def divide(self, epoch: int) -> dict:
        if epoch > self.cfg.dividemix_warmup:
            return super().divide(epoch)
        self.weights = torch.ones(len(self.data.records))
        log.info("epoch %d: warm-up, every pair weighs 1 (dividemix_warmup %d)", epoch, self.cfg.dividemix_warmup)
        return {}
