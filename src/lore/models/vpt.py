"""Baselines on the frozen ViT: linear probe, VPT-shallow, VPT-deep, full fine-tuning."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..backbone import BlackBox
from .registry import register
from .base import AdaptedViT, make_head


class GlobalPrompts(nn.Module):
    """Learnable prompt tokens (VPT): (1, L_p, P, D), N(0, 0.02) init; L_p = 1 (shallow) or depth."""

    def __init__(self, layers: int, num_prompts: int, dim: int, std: float = 0.02):
        super().__init__()
        self.tokens = nn.Parameter(torch.randn(1, layers, num_prompts, dim) * std)

    def forward(self) -> torch.Tensor:
        return self.tokens


class VPT(AdaptedViT):
    def __init__(self, black_box: BlackBox, num_classes: int, deep: bool = True,
                 num_prompts: int = 10, knowledge: torch.Tensor | None = None):
        super().__init__(black_box, num_classes, make_head(black_box, num_classes, knowledge),
                         deep=deep, num_prompts=num_prompts)
        self.method = "vpt-deep" if deep else "vpt-shallow"
        self.global_prompts = GlobalPrompts(black_box.depth if deep else 1, num_prompts,
                                            black_box.embed_dim)

    def prompts(self, e0: torch.Tensor) -> torch.Tensor:
        return self.global_prompts()


class Linear(AdaptedViT):
    """Linear probe (``full=False``) or full fine-tuning (``full=True``, backbone trainable)."""

    def __init__(self, black_box: BlackBox, num_classes: int, knowledge: torch.Tensor | None = None,
                 method: str = "linear"):
        super().__init__(black_box, num_classes, make_head(black_box, num_classes, knowledge))
        self.method = method

    def logits_from_features(self, pooled: torch.Tensor) -> torch.Tensor:
        """The logits of the frozen backbone's pooled feature (training on cached features)."""
        return self.head(pooled)

    def feature_head(self) -> bool:
        return not self.black_box.trainable  # full fine-tuning changes the features


class Plain(AdaptedViT):
    """B-B: the frozen backbone alone, for features (no head)."""

    method = "b-b"
    bare = True

    def __init__(self, black_box: BlackBox):
        super().__init__(black_box, 0, nn.Identity())


def _vpt_options(cfg) -> dict:
    return {"num_prompts": cfg.global_prompts}


@register("b-b", order=0, needs_classes=False, bench=True, bench_as="linear")
def _plain(black_box: BlackBox, num_classes: int = 0, **_) -> AdaptedViT:
    return Plain(black_box)


@register("linear", order=2, bench=True)
def _linear(black_box: BlackBox, num_classes: int, knowledge=None, **_) -> AdaptedViT:
    return Linear(black_box, num_classes, knowledge)


@register("full", order=3, trainable_backbone=True)
def _full(black_box: BlackBox, num_classes: int, knowledge=None, **_) -> AdaptedViT:
    return Linear(black_box, num_classes, knowledge, method="full")


@register("vpt-shallow", order=4, options=_vpt_options, bench=True)
def _vpt_shallow(black_box: BlackBox, num_classes: int, num_prompts: int | None = None,
                 knowledge=None, **_) -> AdaptedViT:
    return VPT(black_box, num_classes, deep=False, num_prompts=num_prompts or 10, knowledge=knowledge)


@register("vpt-deep", order=5, options=_vpt_options, bench=True)
def _vpt_deep(black_box: BlackBox, num_classes: int, num_prompts: int | None = None,
              knowledge=None, **_) -> AdaptedViT:
    return VPT(black_box, num_classes, deep=True, num_prompts=num_prompts or 10, knowledge=knowledge)
