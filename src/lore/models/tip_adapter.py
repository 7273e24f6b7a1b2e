"""Tip-Adapter and Tip-Adapter-F (Zhang et al., ECCV 2022): a key-value cache of the few-shot
training set added to zero-shot CLIP.

    f = normalise(image embedding)                          (B, d)
    A = exp(-beta * (1 - f @ keys^T))                       (B, N) affinity to the N cached images
    logits = 100 * cos(f, text_c) + alpha * A @ values      values: (N, C) one-hot labels

Tip-Adapter is training-free: keys are the L2-normalised few-shot image embeddings. Tip-Adapter-F
makes the keys learnable (initialised from the cache) and trains only them.

The cache is built by the harness (``build_cache``) from the few-shot training set. Keys and values
are saved in the checkpoint; ``cache_size`` in ``model.json`` lets a reload allocate them.
(The reference averages 10 augmented views per image for the keys and searches alpha/beta on a
validation set; we use one un-augmented view and the given alpha/beta.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..backbone import BlackBox
from ..errors import LoreError
from ..values import opt
from .registry import register
from .base import AdaptedViT, require_clip, text_classifier
from .clip_adapter import image_embedding


class TipAdapter(AdaptedViT):
    def __init__(self, black_box: BlackBox, num_classes: int, knowledge: torch.Tensor | None = None,
                 alpha: float = 1.0, beta: float = 5.5, fine_tune: bool = False, cache_size: int = 0):
        self.method = "tip-adapter-f" if fine_tune else "tip-adapter"
        require_clip(black_box, self.method)
        super().__init__(black_box, num_classes, text_classifier(black_box, num_classes, knowledge),
                         alpha=alpha, beta=beta, cache_size=cache_size)
        self.alpha, self.beta, self.fine_tune = alpha, beta, fine_tune
        # an empty cache adds nothing: the model is zero-shot CLIP until build_cache
        self._set_cache(torch.zeros(cache_size, black_box.out_dim), torch.zeros(cache_size, num_classes))

    def _set_cache(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        if self.fine_tune:
            self.cache_keys = nn.Parameter(keys)
        else:
            self.register_buffer("cache_keys", keys)
        self.register_buffer("cache_values", values)

    needs_train_features = True

    def prepare(self, features_labels: tuple[torch.Tensor, torch.Tensor], num_classes: int) -> None:
        self.build_cache(features_labels, num_classes)

    @torch.no_grad()
    def build_cache(self, features_labels: tuple[torch.Tensor, torch.Tensor], num_classes: int) -> None:
        """Cache the few-shot set: keys = normalised image embeddings (N, d), values = one-hot (N, C)."""
        feats, labels = features_labels
        if num_classes != self.num_classes:
            raise LoreError(f"cache for {num_classes} classes given to a {self.num_classes}-class model")
        if feats.ndim != 2 or feats.shape[1] != self.black_box.out_dim or len(feats) != len(labels):
            raise LoreError(f"cache features must be (N, {self.black_box.out_dim}) with N labels, got "
                            f"{tuple(feats.shape)} and {len(labels)} labels")
        device = self.head.fc.weight.device
        keys = F.normalize(feats.float(), dim=-1).to(device)
        values = F.one_hot(labels.long(), num_classes).float().to(device)
        self._set_cache(keys, values)
        self.options["cache_size"] = len(keys)

    def cache_logits(self, f: torch.Tensor) -> torch.Tensor:
        """(B, d) normalised image embeddings -> (B, C) cache-model logits (before alpha)."""
        affinity = f @ self.cache_keys.to(f.dtype).t()
        return torch.exp(-self.beta * (1 - affinity)) @ self.cache_values.to(f.dtype)

    def feature_head(self) -> bool:
        return not self.black_box.trainable

    def logits_from_features(self, x: torch.Tensor) -> torch.Tensor:
        """The logits of a (B, d) CLIP image embedding (training on cached features)."""
        return self.head(x) + self.alpha * self.cache_logits(F.normalize(x, dim=-1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits_from_features(image_embedding(self.black_box, images))

    def training_loss(self, images, targets, index=None):
        if len(self.cache_keys) == 0:
            raise LoreError(f"--method {self.method}: the cache is empty; build_cache(few-shot "
                            "features) must run before training")
        return super().training_loss(images, targets, index)


@dataclass
class TipAdapterOptions:
    """Tip-Adapter's (and Tip-Adapter-F's) options."""
    tip_alpha: float = opt(1.0, "Tip-Adapter: cache-model weight alpha", low=0)
    tip_beta: float = opt(5.5, "Tip-Adapter: sharpness beta", low=0)


def _tip_options(cfg) -> dict:
    return {"alpha": cfg.tip_alpha, "beta": cfg.tip_beta}


@register("tip-adapter", config=TipAdapterOptions, order=11, needs_knowledge=True, trains=False, dry_run_knowledge=True,
          options=_tip_options)
def _tip_adapter(black_box: BlackBox, num_classes: int, knowledge=None, alpha: float = 1.0,
                 beta: float = 5.5, cache_size: int = 0, **_) -> AdaptedViT:
    return TipAdapter(black_box, num_classes, knowledge, alpha, beta, fine_tune=False, cache_size=cache_size)


@register("tip-adapter-f", order=12, needs_knowledge=True, dry_run_knowledge=True, options=_tip_options)
def _tip_adapter_f(black_box: BlackBox, num_classes: int, knowledge=None, alpha: float = 1.0,
                   beta: float = 5.5, cache_size: int = 0, **_) -> AdaptedViT:
    return TipAdapter(black_box, num_classes, knowledge, alpha, beta, fine_tune=True, cache_size=cache_size)
