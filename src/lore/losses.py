"""The K-L prototype constraint L_kp (docs/method.md, "L_kp").

    L_kp = mean_b [ -cos(Y_b, A^_{b,t}) + 1[t_b != p_b] * cos(Y_b, A^_{b,p}) ]

It pulls the PG's latent embedding Y toward the prototype of the true class t and, when the Black
Box got the image wrong (p != t), pushes it away from the prototype of the predicted class p.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["kp_loss"]


def kp_loss(y: Tensor, proto_true: Tensor, proto_wrong: Tensor | None, true: Tensor, wrong: Tensor | None,
            reduction: str = "mean") -> Tensor:
    """K-L prototype loss.

    Args:
        y: (B, D) latent embeddings Y from the Prompt Generator.
        proto_true: (B, D) prototypes A^_t of the true classes.
        proto_wrong: (B, D) prototypes A^_p of the wrong (predicted) classes, or None for no
            negative term.
        true: (B,) long true labels t.
        wrong: (B,) long wrong labels p; required when ``proto_wrong`` is given.

        reduction: "mean" (scalar) or "none" (per-sample (B,), for weighting across processes).

    Returns:
        Scalar loss in [-2, 2] (or the (B,) per-sample terms).
    """
    loss = -F.cosine_similarity(y, proto_true, dim=-1)  # (B,)
    if proto_wrong is not None:
        if wrong is None:
            raise ValueError("kp_loss: proto_wrong given without the wrong labels")
        # The negative term only counts where the wrong class differs from the true one.
        negative = (true != wrong).to(loss.dtype)
        loss = loss + negative * F.cosine_similarity(y, proto_wrong, dim=-1)
    return loss.mean() if reduction == "mean" else loss
