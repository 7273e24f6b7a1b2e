"""LIN - Locality Interaction Network (docs/method.md, "LIN").

LIN turns the frozen patch embedding E0 into locality-enhanced tokens E^ by message passing on a
dynamic k-nearest-neighbour graph of the patch tokens, rebuilt for every image (ViG style).

Two published forms, chosen by ``variant``:

* ``"vig"`` (default, the reference code): per block a ViG *Grapher* then an *FFN*::

      Grapher: z = BN(W_fc1 x)                                  # 1x1 conv D -> D
               idx = kNN(z)  (cosine, self included, dilation 1)
               m = [z_i, max_{j in N(i)} (z_j - z_i)]           # max-relative, 2D channels
               g = GELU(BN(GroupConv_4(m)))                     # 1x1 grouped conv 2D -> 2D
               x = x + BN(W_fc2 g)                              # 1x1 conv 2D -> D
      FFN:     x = x + BN(W_2 GELU(BN(W_1 x)))                  # D -> 4D -> D

* ``"paper"``: per block ``E^ = relu(E' W1) W2 + E0`` where ``E'`` is the same max-relative
  feature ``[x_i, max_j (x_j - x_i)]`` projected back to D by a linear layer (2D -> D), and
  W1, W2 are D x D linear layers (with bias).

A 1x1 convolution over tokens is a per-token linear map; we run it as ``Conv1d(kernel_size=1)``
on a (B, C, N) layout, which has the same parameters as the reference's ``Conv2d`` 1x1 on
(B, C, N, 1) and lets ``BatchNorm1d`` normalise per channel over batch and tokens, as BN2d does.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .norm import Norm, token_norm

__all__ = ["LIN", "knn_indices", "max_relative"]

LINVariant = Literal["vig", "paper"]


def knn_indices(x: Tensor, k: int) -> Tensor:
    """Indices of the k nearest neighbours of every token, by cosine similarity.

    Equivalent to ViG's ``dense_knn_matrix``: L2 distance between L2-normalised features ranks
    neighbours exactly as cosine similarity does. A token is its own nearest neighbour (cosine 1),
    so it is included in its neighbourhood, as ViG does. Computed batched on ``x``'s device; no
    gradient flows through the (discrete) graph.

    Args:
        x: (B, N, D) token features.
        k: neighbours per token, 1 <= k <= N.

    Returns:
        (B, N, k) long: ``idx[b, i]`` are the neighbours of token i of image b, most similar first.
    """
    if x.dim() != 3:
        raise ValueError(f"knn_indices expects (B, N, D), got shape {tuple(x.shape)}")
    n = x.shape[1]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    with torch.no_grad():
        xn = F.normalize(x.detach(), dim=-1)
        sim = xn @ xn.transpose(1, 2)  # (B, N, N)
        return sim.topk(k, dim=-1).indices


def max_relative(x: Tensor, idx: Tensor) -> Tensor:
    """Max-relative aggregation: ``r_i = max_{j in idx[i]} (x_j - x_i)`` per channel.

    ``max_j (x_j - x_i) = max_j x_j - x_i`` because x_i is constant over j, which avoids
    materialising the (B, N, k, D) difference tensor.

    Args:
        x: (B, N, D) token features.
        idx: (B, N, k) long neighbour indices (from :func:`knn_indices`).

    Returns:
        (B, N, D) relative features.
    """
    batch = torch.arange(x.shape[0], device=x.device)[:, None, None]  # (B, 1, 1)
    neighbours = x[batch, idx]  # (B, N, k, D)
    return neighbours.amax(dim=2) - x


def _interleave(x: Tensor, rel: Tensor) -> Tensor:
    """[x_i, r_i] as (B, N, 2D) with channels interleaved (x_0, r_0, x_1, r_1, ...).

    ViG's MRConv2d interleaves the two halves, so each of the 4 groups of the grouped conv sees
    both the token and its relative feature (a plain concat would give two groups only x and two
    only r).
    """
    return torch.stack((x, rel), dim=-1).flatten(-2)


def _conv_bn(c_in: int, c_out: int, norm: Norm, groups: int = 1) -> nn.Sequential:
    """1x1 conv (with bias) + normalisation (BatchNorm in the reference) on a (B, C, N) layout."""
    return nn.Sequential(nn.Conv1d(c_in, c_out, kernel_size=1, groups=groups), token_norm(norm, c_out))


class Grapher(nn.Module):
    """ViG Grapher: fc1, dynamic kNN max-relative graph conv, fc2, residual.

    Shapes: forward((B, D, N)) -> (B, D, N).
    """

    def __init__(self, dim: int, k: int, groups: int, norm: Norm) -> None:
        super().__init__()
        self.k = k
        self.fc1 = _conv_bn(dim, dim, norm=norm)
        self.graph_conv = nn.Sequential(*_conv_bn(2 * dim, 2 * dim, groups=groups, norm=norm), nn.GELU())
        self.fc2 = _conv_bn(2 * dim, dim, norm=norm)

    def forward(self, x: Tensor) -> Tensor:
        z = self.fc1(x).transpose(1, 2)  # (B, N, D): the graph is built on fc1's output, as in ViG
        idx = knn_indices(z, min(self.k, z.shape[1]))
        m = _interleave(z, max_relative(z, idx)).transpose(1, 2)  # (B, 2D, N)
        return x + self.fc2(self.graph_conv(m))


class FFN(nn.Module):
    """ViG FFN: 1x1 conv D -> hidden + BN, GELU, 1x1 conv hidden -> D + BN, residual.

    Shapes: forward((B, D, N)) -> (B, D, N).
    """

    def __init__(self, dim: int, hidden: int, norm: Norm) -> None:
        super().__init__()
        self.fc1 = _conv_bn(dim, hidden, norm=norm)
        self.fc2 = _conv_bn(hidden, dim, norm=norm)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.fc2(F.gelu(self.fc1(x)))


class ViGBlock(nn.Module):
    """One reference LIN block: Grapher then FFN. Shapes: (B, D, N) -> (B, D, N)."""

    def __init__(self, dim: int, k: int, groups: int, norm: Norm) -> None:
        super().__init__()
        self.grapher = Grapher(dim, k, groups, norm)
        self.ffn = FFN(dim, 4 * dim, norm)

    def forward(self, x: Tensor) -> Tensor:
        return self.ffn(self.grapher(x))


class PaperBlock(nn.Module):
    """The paper's LIN block: ``relu(E' W1) W2 + E0``. Shapes: (B, N, D) -> (B, N, D).

    ``E' = Linear(2D -> D)([x_i, max_j (x_j - x_i)])`` on the kNN graph of the block input.
    """

    def __init__(self, dim: int, k: int) -> None:
        super().__init__()
        self.k = k
        self.aggregate = nn.Linear(2 * dim, dim)
        self.w1 = nn.Linear(dim, dim)
        self.w2 = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        idx = knn_indices(x, min(self.k, x.shape[1]))
        e = self.aggregate(_interleave(x, max_relative(x, idx)))
        return self.w2(F.relu(self.w1(e))) + x


class LIN(nn.Module):
    """Locality Interaction Network.

    Args:
        dim: token width D (the ViT's embedding width d_e).
        k: neighbours per token in the kNN graph (self included); clamped to the token count.
        blocks: number of stacked LIN blocks.
        variant: ``"vig"`` (reference Grapher + FFN) or ``"paper"`` (relu(E'W1)W2 + E0).
        groups: groups of the grouped 2D -> 2D conv of the ``"vig"`` Grapher (must divide 2D).
        norm: the ``"vig"`` form's normalisation: ``"batch"`` (reference), ``"layer"`` or ``"none"``
            (see :mod:`lore.whitebox.norm`).

    The options have no defaults here: LORE's options (``lore.models.lore.LOREOptions``) hold them.

    Shapes:
        forward(e0: (B, h, w, D) or (B, N, D)) -> E^ with the same shape as ``e0``.

    BatchNorm (``"vig"``) uses batch statistics in training mode: train with B * N > 1.
    """

    def __init__(self, dim: int, *, k: int, blocks: int, variant: LINVariant, norm: Norm, groups: int = 4) -> None:
        super().__init__()
        if variant not in ("vig", "paper"):
            raise ValueError(f"LIN variant must be 'vig' or 'paper', got {variant!r}")
        if k < 1 or blocks < 1:
            raise ValueError(f"LIN needs k >= 1 and blocks >= 1, got k={k}, blocks={blocks}")
        if variant == "vig" and (2 * dim) % groups != 0:
            raise ValueError(f"groups={groups} must divide 2 * dim = {2 * dim}")
        self.dim, self.k, self.variant = dim, k, variant
        if variant == "vig":
            self.blocks = nn.ModuleList(ViGBlock(dim, k, groups, norm) for _ in range(blocks))
        else:
            self.blocks = nn.ModuleList(PaperBlock(dim, k) for _ in range(blocks))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal conv/linear weights and zero biases (the reference's ViG init)."""
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, e0: Tensor) -> Tensor:
        if e0.dim() not in (3, 4) or e0.shape[-1] != self.dim:
            raise ValueError(f"LIN expects (B, N, {self.dim}) or (B, h, w, {self.dim}), got {tuple(e0.shape)}")
        x = e0.flatten(1, -2)  # (B, N, D)
        if self.variant == "vig":
            x = x.transpose(1, 2)  # (B, D, N) for the 1x1 convs
            for block in self.blocks:
                x = block(x)
            x = x.transpose(1, 2)
        else:
            for block in self.blocks:
                x = block(x)
        return x.reshape(e0.shape)
