"""LORE: locality-aware prompt learning for frozen pre-trained Vision Transformers."""

__version__ = "0.1.0"
