"""The White Box's normalisation layers, by name.

The reference normalises every LIN and PG layer with BatchNorm. In few-shot training a batch holds
a handful of images of two or three classes, so in training mode each image is normalised by the
statistics of the others in its batch, and at test time by running statistics that have seen only
a few such batches. The batch-independent forms here normalise each image on its own:

* ``"batch"``: BatchNorm1d (the reference).
* ``"layer"``: per image over its channels: LayerNorm on a (B, C) vector, GroupNorm with one group
  on a (B, C, N) token layout (channels and tokens together, as BatchNorm pools tokens too).
* ``"none"``: no normalisation.
"""

from __future__ import annotations

from typing import Literal

from torch import nn

Norm = Literal["batch", "layer", "none"]
NORMS = ("batch", "layer", "none")


def _check(norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"White Box norm must be one of {NORMS}, got {norm!r}")


def vector_norm(norm: Norm, channels: int) -> nn.Module:
    """Normalisation of a (B, C) tensor."""
    _check(norm)
    if norm == "batch":
        return nn.BatchNorm1d(channels)
    return nn.LayerNorm(channels) if norm == "layer" else nn.Identity()


def token_norm(norm: Norm, channels: int) -> nn.Module:
    """Normalisation of a (B, C, N) token tensor."""
    _check(norm)
    if norm == "batch":
        return nn.BatchNorm1d(channels)
    return nn.GroupNorm(1, channels) if norm == "layer" else nn.Identity()
