"""Registry of adaptation methods: ``build_model(method, backbone, num_classes, **options)``.

Each method lives in its own module and registers a constructor under its CLI name.
"""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

from ..backbone import BlackBox, build_black_box
from ..errors import LoreError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_UNAVAILABLE: dict[str, str] = {}


def register(name: str):
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = fn
        return fn
    return deco


def available_methods() -> list[str]:
    return sorted(_REGISTRY)


def build_model(method: str, backbone: str | BlackBox, num_classes: int, *, pretrained: bool = True,
                checkpoint: str | None = None, backbone_args: dict | str | None = None,
                **options) -> nn.Module:
    """Build ``method`` on a frozen timm ViT (by name, or an existing :class:`BlackBox`).

    Returns an ``nn.Module`` with ``forward(images) -> logits`` and
    ``features(images) -> dict(cls=..., patches=..., prompts=..., pooled=..., attn=...)``.
    """
    if method in _UNAVAILABLE:
        raise LoreError(_UNAVAILABLE[method])
    if method not in _REGISTRY:
        raise LoreError(f"unknown --method {method!r}; choose one of: {', '.join(available_methods())}")
    if isinstance(backbone, BlackBox):
        black_box = backbone
    else:
        black_box = build_black_box(backbone, pretrained=pretrained, checkpoint=checkpoint,
                                    backbone_args=backbone_args, trainable=(method == "full"))
    if num_classes < 1 and method != "b-b":
        raise LoreError(f"need at least one class, got num_classes={num_classes}")
    return _REGISTRY[method](black_box, num_classes, **options)


# importing the method modules fills the registry
from . import vpt, zeroshot, lore, coop, clip_adapter, tip_adapter, cocoop, prograd, maple  # noqa: E402,F401
