"""Registry of adaptation methods: ``build_model(method, backbone, num_classes, **options)``.

Each method lives in its own module and registers its constructor under its CLI name, with what
the harness needs to know about it (:class:`lore.models.registry.Method`).
"""

from __future__ import annotations

import torch.nn as nn

from ..backbone import BlackBox, build_black_box
from ..errors import LoreError
from .registry import Method, available_methods, get, methods, register  # noqa: F401 - the public API


def build_model(method: str, backbone: str | BlackBox, num_classes: int, *, pretrained: bool = True,
                checkpoint: str | None = None, backbone_args: dict | str | None = None,
                **options) -> nn.Module:
    """Build ``method`` on a frozen timm ViT (by name, or an existing :class:`BlackBox`).

    Args:
        method: a registered method name (``lore``, ``vpt-deep``, ``coop``, ...; see
            :func:`available_methods`).
        backbone: a timm model name (optionally ``.pretrained_tag``) or a built ``BlackBox``.
        num_classes: classes of the task head.
        pretrained: load the backbone's pre-trained weights from the hub.
        checkpoint: local backbone weights of the same architecture.
        backbone_args: ``key=value,...`` (or a dict) passed to ``timm.create_model``.
        **options: the method's options, e.g. ``knowledge=`` (a (C, d) tensor of class
            embeddings) and ``wb_norm=`` for LORE; LORE's options left out take the defaults
            of ``lore train --method lore``.

    Returns:
        An ``nn.Module`` with ``forward(images) -> logits`` and ``features(images) -> dict(cls=...,
        patches=..., prompts=..., pooled=..., attn=...)``.
    """
    spec = get(method)
    if isinstance(backbone, BlackBox):
        black_box = backbone
    else:
        black_box = build_black_box(backbone, pretrained=pretrained, checkpoint=checkpoint,
                                    backbone_args=backbone_args, trainable=spec.trainable_backbone)
    if num_classes < 1 and spec.needs_classes:
        raise LoreError(f"need at least one class, got num_classes={num_classes}")
    return spec.build(black_box, num_classes, **options)


def _import_methods() -> None:
    """Importing every module of this package fills the registry: a new method is one new file."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if info.name not in ("base", "registry"):
            importlib.import_module(f"{__name__}.{info.name}")


_import_methods()
