"""3RTPR's reciprocal twins: two models trained side by side on independent augmented views, sharing the
per-epoch division (every embedding of both models votes) and the ALR soft weights; averaged at test time."""
from ..engine import Engine
from . import register_method


@register_method("twins")
class ReciprocalTwins(Engine):
    defaults = {"twin": True, "weighting": "alr"}
