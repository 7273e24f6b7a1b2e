"""PG - Prompt Generator (docs/method.md, "Prompt Generator").

From the locality-enhanced tokens E^ it makes the latent embedding Y (pulled toward the K-L
prototypes by L_kp) and, from Y, the locality-aware prompts U of every ViT layer::

    Y = Psi_2(avgpool(E^))   Psi_2: D -> r, BN, GELU, r -> D
    U = Psi_1(Y)             Psi_1: D -> r, BN, GELU, r -> L*n*D, BN, Dropout  -> (L, n, D)

The reference writes these as 1x1 convs on a (B, C, 1, 1) tensor; that is exactly a Linear on
(B, C) (same parameters), with BatchNorm1d in place of BatchNorm2d.
"""

from __future__ import annotations

from torch import Tensor, nn

from .norm import Norm, vector_norm

__all__ = ["PromptGenerator"]


class PromptGenerator(nn.Module):
    """Prompt Generator.

    Args:
        dim: token width D.
        depth: L, the number of ViT layers that receive prompts.
        num_prompts: n, locality-aware prompts per layer.
        bottleneck: r, the hidden width of Psi_1 and Psi_2.
        dropout: dropout on the generated prompts.
        norm: ``"batch"`` (reference BatchNorm1d), ``"layer"`` (LayerNorm) or ``"none"``.

    The options have no defaults here: LORE's options (``lore.models.lore.LOREOptions``) hold them.

    Shapes:
        forward(e_hat: (B, N, D) or (B, h, w, D)) -> (Y: (B, D), U: (B, L, n, D))

    BatchNorm uses batch statistics in training mode: train with B > 1.
    """

    def __init__(self, dim: int, depth: int, *, num_prompts: int, bottleneck: int, dropout: float,
                 norm: Norm) -> None:
        super().__init__()
        self.dim, self.depth, self.num_prompts = dim, depth, num_prompts
        out = depth * num_prompts * dim
        self.psi2 = nn.Sequential(
            nn.Linear(dim, bottleneck), vector_norm(norm, bottleneck), nn.GELU(), nn.Linear(bottleneck, dim)
        )
        self.psi1 = nn.Sequential(
            nn.Linear(dim, bottleneck), vector_norm(norm, bottleneck), nn.GELU(),
            nn.Linear(bottleneck, out), vector_norm(norm, out), nn.Dropout(dropout),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal weights, zero biases (the reference init)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, e_hat: Tensor) -> tuple[Tensor, Tensor]:
        if e_hat.dim() not in (3, 4) or e_hat.shape[-1] != self.dim:
            raise ValueError(f"PromptGenerator expects (B, N, {self.dim}) or (B, h, w, {self.dim}), "
                             f"got {tuple(e_hat.shape)}")
        pooled = e_hat.flatten(1, -2).mean(dim=1)  # (B, D): global average pool over the tokens
        y = self.psi2(pooled)
        u = self.psi1(y).view(-1, self.depth, self.num_prompts, self.dim)
        return y, u
