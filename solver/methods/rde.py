"""RDE (CVPR 2024): the engine as it is, one model, consensus clean division.  ICL's RDA term and its eval-mode
training come from the annotations (diversity captions) and ``published_eval_mode``."""
from ..engine import Engine
from . import register_method


@register_method("rde")
class RDE(Engine):
    pass
