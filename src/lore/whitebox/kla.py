"""KLA - Knowledge-Locality Attention (docs/method.md, "KLA"). Used in training only.

Single-head cross attention from class knowledge (frozen text embeddings q_c, the queries, no
W_q) to the locality-enhanced tokens E^ (keys and values), giving one K-L prototype per
(image, query row)::

    K = E^ W_k,  V = E^ W_v                       # D -> d_q, no bias
    S = Q K^T * sqrt(h)        ("code")   |  S = Q K^T / sqrt(D)   ("paper")
    S = top-N filter of each row
    A = proj(softmax(S) V)                       # d_q -> D
    A^ = A                     ("code")   |  A^ = BN(MLP(A) + A)   ("paper")

Top-N filter: ``"code"`` keeps the N largest scores of a row, sets the others to 0 (zero, not
-inf, so they still get softmax weight) and rescales the row to L2 norm = number of patches;
``"paper"`` keeps the N largest and sets the others to -inf (they get weight exactly 0).

Note on ``"code"``: the row rescaling removes any positive scale of S, so the sqrt(h) factor has
no effect on the output; we keep it for fidelity to the reference.

The loss needs only the rows of the true class t and the wrong class p: :meth:`KLA.forward_rows`
takes per-image query rows (B, R, d_q) so the training step never scores all C classes.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["KLA", "topn_filter"]

KLAVariant = Literal["code", "paper"]


def topn_filter(scores: Tensor, n: int, fill: float) -> Tensor:
    """Keep the n largest entries of each row (last dim) and replace the others with ``fill``.

    Args:
        scores: (..., N) scores.
        n: entries kept per row, clamped to N.
        fill: value of the dropped entries (0.0 for the reference code, -inf for the paper).

    Returns:
        (..., N) filtered scores; gradient flows only through the kept entries.
    """
    idx = scores.topk(min(n, scores.shape[-1]), dim=-1).indices
    keep = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, idx, True)
    return scores.masked_fill(~keep, fill)


class KLA(nn.Module):
    """Knowledge-Locality Attention.

    Args:
        dim: token width D of E^ (and of the prototypes).
        knowledge_dim: width d_q of the knowledge embeddings (512 for CLIP ViT-B/16's text tower).
        topn: scores kept per query row (N; LORE's ``--kla-topn``, 9 by default).
        variant: ``"code"`` (reference) or ``"paper"``; see the module docstring.

    Shapes:
        forward(e_hat: (B, N, D), queries: (C, d_q) or (B, R, d_q)) ->
            (prototypes: (B, C or R, D), attention: (B, C or R, N))

    Linear layers keep PyTorch's default init. In the ``"paper"`` variant the BatchNorm uses the
    statistics of the rows it is given in training mode, so only in eval mode do
    :meth:`forward_rows` and the all-classes call agree exactly for that variant.
    """

    def __init__(self, dim: int, knowledge_dim: int, *, topn: int, variant: KLAVariant) -> None:
        super().__init__()
        if variant not in ("code", "paper"):
            raise ValueError(f"KLA variant must be 'code' or 'paper', got {variant!r}")
        if topn < 1:
            raise ValueError(f"topn must be >= 1, got {topn}")
        self.dim, self.knowledge_dim, self.topn, self.variant = dim, knowledge_dim, topn, variant
        self.w_k = nn.Linear(dim, knowledge_dim, bias=False)
        self.w_v = nn.Linear(dim, knowledge_dim, bias=False)
        self.proj = nn.Linear(knowledge_dim, dim)
        if variant == "paper":
            self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
            self.norm = nn.BatchNorm1d(dim)

    def attention(self, e_hat: Tensor, queries: Tensor, grid_h: int | None = None) -> Tensor:
        """Attention weights of each query row over the patches.

        Args:
            e_hat: (B, N, D) locality-enhanced tokens.
            queries: (C, d_q) shared by all images, or (B, R, d_q) per image.
            grid_h: token grid height h for the ``"code"`` scale; None means a square grid,
                h = sqrt(N) (an error if N is not a square).

        Returns:
            (B, C or R, N) softmax weights, each row sums to 1.
        """
        if e_hat.dim() != 3 or e_hat.shape[-1] != self.dim:
            raise ValueError(f"KLA expects e_hat (B, N, {self.dim}), got {tuple(e_hat.shape)}")
        if queries.dim() not in (2, 3) or queries.shape[-1] != self.knowledge_dim:
            raise ValueError(f"KLA expects queries (C, {self.knowledge_dim}) or (B, R, {self.knowledge_dim}), "
                             f"got {tuple(queries.shape)}")
        n_patches = e_hat.shape[1]
        keys = self.w_k(e_hat)  # (B, N, d_q)
        # (C, d_q) @ (B, d_q, N) broadcasts to (B, C, N); (B, R, d_q) @ (B, d_q, N) is a bmm.
        scores = queries.to(keys.dtype) @ keys.transpose(1, 2)
        if self.variant == "code":
            scores = scores * math.sqrt(self._grid_h(n_patches, grid_h))
            scores = topn_filter(scores, self.topn, 0.0)
            scores = F.normalize(scores, dim=-1) * n_patches  # row L2 norm = number of patches
        else:
            scores = topn_filter(scores / math.sqrt(self.dim), self.topn, float("-inf"))
        return scores.softmax(dim=-1)

    def forward(self, e_hat: Tensor, queries: Tensor, grid_h: int | None = None) -> tuple[Tensor, Tensor]:
        """K-L prototypes and attention weights.

        Args:
            e_hat: (B, N, D) locality-enhanced tokens.
            queries: (C, d_q) knowledge of all classes, or (B, R, d_q) per-image rows.
            grid_h: see :meth:`attention`.

        Returns:
            prototypes (B, C or R, D) and attention weights (B, C or R, N).
        """
        attn = self.attention(e_hat, queries, grid_h)
        protos = self.proj(attn @ self.w_v(e_hat))  # (B, R, D)
        if self.variant == "paper":
            protos = protos + self.mlp(protos)
            protos = self.norm(protos.flatten(0, 1)).view_as(protos)
        return protos, attn

    def forward_rows(self, e_hat: Tensor, q_rows: Tensor, grid_h: int | None = None) -> tuple[Tensor, Tensor]:
        """Prototypes for per-image query rows only, e.g. R = 2: (knowledge[t], knowledge[p]).

        Args:
            e_hat: (B, N, D).
            q_rows: (B, R, d_q) gathered by the caller, e.g. ``knowledge[torch.stack((t, p), 1)]``.
            grid_h: see :meth:`attention`.

        Returns:
            prototypes (B, R, D) and attention weights (B, R, N), equal to the matching rows of the
            all-classes call.
        """
        if q_rows.dim() != 3 or q_rows.shape[0] != e_hat.shape[0]:
            raise ValueError(f"forward_rows expects q_rows (B={e_hat.shape[0]}, R, d_q), got {tuple(q_rows.shape)}")
        return self(e_hat, q_rows, grid_h)

    @staticmethod
    def _grid_h(n_patches: int, grid_h: int | None) -> int:
        if grid_h is not None:
            if grid_h < 1 or n_patches % grid_h != 0:
                raise ValueError(f"grid_h={grid_h} does not divide the {n_patches} patch tokens")
            return grid_h
        h = math.isqrt(n_patches)
        if h * h != n_patches:
            raise ValueError(f"{n_patches} patch tokens are not a square grid: pass grid_h")
        return h
