"""LORE: locality-aware prompt learning for frozen pre-trained Vision Transformers."""

__version__ = "0.1.0"

from . import pretrained  # noqa: E402,F401  (first: tells timm the offline backbone names)
from .checkpoint import load_run  # noqa: E402
from .models import available_methods, build_model  # noqa: E402

__all__ = ["build_model", "load_run", "available_methods", "__version__"]
