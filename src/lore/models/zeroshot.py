"""Zero-shot CLIP: cosine of the image embedding with each class's text embedding, no training."""

from __future__ import annotations

import torch

from ..backbone import BlackBox
from ..errors import LoreError
from . import register
from .base import AdaptedViT, CosineHead


class ZeroShot(AdaptedViT):
    method = "zeroshot"

    def __init__(self, black_box: BlackBox, num_classes: int, knowledge: torch.Tensor | None = None):
        if not black_box.is_clip:
            raise LoreError(f"--method zeroshot needs a CLIP backbone (e.g. "
                            f"vit_base_patch16_clip_224.openai), got {black_box.name}")
        head = CosineHead(black_box.out_dim, num_classes, init=knowledge)
        if knowledge is not None and knowledge.shape != head.fc.weight.shape:
            raise LoreError(f"zero-shot class embeddings are {tuple(knowledge.shape)} but the image "
                            f"embedding is {black_box.out_dim}-d for {num_classes} classes: use the "
                            "backbone's own CLIP text tower as --knowledge")
        head.requires_grad_(False)
        super().__init__(black_box, num_classes, head)


@register("zeroshot")
def _zeroshot(black_box: BlackBox, num_classes: int, knowledge=None, **_) -> AdaptedViT:
    return ZeroShot(black_box, num_classes, knowledge)
