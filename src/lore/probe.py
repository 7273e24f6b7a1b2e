"""A linear probe on frozen features, fitted in closed form-like fashion with L-BFGS.

LORE's ``--negative probe`` takes the wrong class p of L_kp from it: for each training image, the
prediction of a probe that did *not* see that image (k-fold cross-fitting). A probe scored on its
own training images is almost always right, which would switch the negative term off.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def fit_probe(feats: torch.Tensor, labels: torch.Tensor, num_classes: int, wd: float = 1e-3,
              steps: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression on standardised features: (weight (C, d), bias (C,))."""
    x = feats.double()
    w = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w.T + b, labels) + wd * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def cross_fitted_predictions(feats: torch.Tensor, labels: torch.Tensor, num_classes: int,
                             folds: int = 4, seed: int = 0) -> torch.Tensor:
    """Each sample's predicted class from a probe fitted on the other folds: (n,) long."""
    n = len(labels)
    x = (feats - feats.mean(0)) / feats.std(0).clamp_min(1e-6)
    fold = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) % max(2, min(folds, n))
    preds = torch.empty(n, dtype=torch.long)
    for k in fold.unique().tolist():
        held = fold == k
        w, b = fit_probe(x[~held], labels[~held], num_classes)
        preds[held] = (x[held].double() @ w.T + b).argmax(dim=-1)
    return preds
