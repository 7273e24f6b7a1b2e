"""CLIP-Adapter (Gao et al., IJCV 2023): a residual bottleneck MLP on the frozen CLIP image
embedding, classified by the frozen zero-shot text classifier.

    x' = ratio * A(x) + (1 - ratio) * x,   logits = 100 * cos(x', text_c)

A = Linear(d, d/4, no bias) -> ReLU -> Linear(d/4, d, no bias) -> ReLU. The paper's equation has no
final ReLU; the reference code does, and we follow the code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..backbone import BlackBox
from ..errors import LoreError
from ..values import opt
from .registry import register
from .base import AdaptedViT, require_clip, text_classifier


def image_embedding(black_box: BlackBox, images: torch.Tensor) -> torch.Tensor:
    """(B, d) CLIP image embedding. The image tower is frozen and nothing before it trains, so no
    activations are kept for backward."""
    with torch.no_grad():
        return black_box(images).pooled


class ClipAdapter(AdaptedViT):
    method = "clip-adapter"

    def __init__(self, black_box: BlackBox, num_classes: int, knowledge: torch.Tensor | None = None,
                 ratio: float = 0.2, reduction: int = 4):
        require_clip(black_box, self.method)
        if not 0.0 <= ratio <= 1.0:
            raise LoreError(f"--adapter-ratio must be in [0, 1], got {ratio}")
        super().__init__(black_box, num_classes, text_classifier(black_box, num_classes, knowledge),
                         ratio=ratio, reduction=reduction)
        d = black_box.out_dim
        self.ratio = ratio
        self.adapter = nn.Sequential(nn.Linear(d, d // reduction, bias=False), nn.ReLU(),
                                     nn.Linear(d // reduction, d, bias=False), nn.ReLU())

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        """(B, d) image embedding -> (B, d) residual-adapted embedding."""
        return self.ratio * self.adapter(x) + (1 - self.ratio) * x

    def feature_head(self) -> bool:
        return not self.black_box.trainable

    def logits_from_features(self, x: torch.Tensor) -> torch.Tensor:
        """The logits of a (B, d) CLIP image embedding (training on cached features)."""
        return self.head(self.adapt(x))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits_from_features(image_embedding(self.black_box, images))


@dataclass
class ClipAdapterOptions:
    """CLIP-Adapter's options."""
    adapter_ratio: float = opt(0.2, "CLIP-Adapter: residual ratio", low=0, high=1)


@register("clip-adapter", config=ClipAdapterOptions, order=10, needs_knowledge=True, dry_run_knowledge=True,
          options=lambda cfg: {"ratio": cfg.adapter_ratio})
def _clip_adapter(black_box: BlackBox, num_classes: int, knowledge=None, ratio: float = 0.2,
                  reduction: int = 4, **_) -> AdaptedViT:
    return ClipAdapter(black_box, num_classes, knowledge, ratio=ratio, reduction=reduction)
