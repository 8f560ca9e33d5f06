from .optimizer import build_optimizer  # noqa: F401
from .scheduler import build_scheduler  # noqa: F401
