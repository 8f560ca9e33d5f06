"""Our starting point (configs/recommended.yaml): reciprocal twins with the consensus division reading the
training pairs like a test set, measured better than the published augmented read (README, "The division pass")."""
from ..engine import Engine
from . import register_method


@register_method("recommended")
class Recommended(Engine):
    defaults = {"twin": True, "weighting": "ccd", "division_read": "clean"}
