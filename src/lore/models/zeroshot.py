"""Zero-shot CLIP: cosine of the image embedding with each class's text embedding, no training."""

from __future__ import annotations

import torch

from ..backbone import BlackBox
from .registry import register
from .base import AdaptedViT, require_clip, text_classifier


class ZeroShot(AdaptedViT):
    method = "zeroshot"

    def __init__(self, black_box: BlackBox, num_classes: int, knowledge: torch.Tensor | None = None):
        require_clip(black_box, self.method)
        super().__init__(black_box, num_classes, text_classifier(black_box, num_classes, knowledge))

    def feature_head(self) -> bool:
        return not self.black_box.trainable

    def logits_from_features(self, x: torch.Tensor) -> torch.Tensor:
        """The logits of a (B, d) CLIP image embedding (evaluation on cached features)."""
        return self.head(x)


@register("zeroshot", order=1, needs_knowledge=True, trains=False, dry_run_knowledge=True)
def _zeroshot(black_box: BlackBox, num_classes: int, knowledge=None, **_) -> AdaptedViT:
    return ZeroShot(black_box, num_classes, knowledge)
