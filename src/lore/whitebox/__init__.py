"""The White Box: LIN, KLA and the Prompt Generator (docs/method.md, "The White Box")."""

from lore.whitebox.kla import KLA, topn_filter
from lore.whitebox.lin import LIN, knn_indices, max_relative
from lore.whitebox.pg import PromptGenerator

__all__ = ["KLA", "LIN", "PromptGenerator", "knn_indices", "max_relative", "topn_filter"]
