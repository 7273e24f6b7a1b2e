"""Easy-to-hard selection as the reference runs it (docs/method.md, "Easy-to-hard").

Stage e trains on the N images per class that *herding* picks first on the frozen image features:
the greedy mean-matching of iCaRL, in its "w_t" form (Welling's herding), which is what the
reference code runs::

    D = L2-normalised features of the class (d x n),  mu = mean of D's columns,  w = mu
    repeat:  i = argmax_j <w, D_j>;  if i has no rank yet, give it the next rank;  w += mu - D_i

Stage h trains on images the stage-e model misclassifies: per class, among its misclassified
images, the N that herding (on the stage-e model's own image features) ranks *last*, i.e. the least
representative mistakes. Where a class has fewer than N mistakes, only those are taken.

Herding runs for all classes at once on a padded (C, n_max, d) tensor; the loop is over herding
iterations, never over classes or images.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .data.sampling import first_per_class

# the reference stops herding after this many iterations per class (stage e: 3000 with at most 2500
# ranks; stage h: 150000): ranks are found long before for few-shot pools
MAX_ITERATIONS = 150_000


def herding_ranks(features: torch.Tensor, labels: torch.Tensor, num_ranks: int | None = None,
                  max_iterations: int = MAX_ITERATIONS) -> torch.Tensor:
    """Herding order of every sample inside its class: (n,) long, 0 = picked first, -1 = never picked.

    ``num_ranks`` stops each class once that many of its samples are ranked (default: all)."""
    device = features.device
    labels = labels.long().to(device)
    n = len(labels)
    num_classes = int(labels.max()) + 1 if n else 0
    counts = torch.bincount(labels, minlength=num_classes)
    n_max = int(counts.max()) if n else 0
    # position of every sample inside its class, in index order
    order = torch.argsort(labels, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.empty(n, dtype=torch.long, device=device)
    slot[order] = torch.arange(n, device=device) - starts[labels[order]]

    feats = F.normalize(features.float(), dim=-1)
    padded = feats.new_zeros(num_classes, n_max, feats.shape[1])
    padded[labels, slot] = feats
    valid = torch.zeros(num_classes, n_max, dtype=torch.bool, device=device)
    valid[labels, slot] = True
    mu = padded.sum(1) / counts.clamp(min=1)[:, None]
    target = counts.clamp(max=num_ranks) if num_ranks is not None else counts

    ranks = torch.full((num_classes, n_max), -1, dtype=torch.long, device=device)
    ranked = torch.zeros(num_classes, dtype=torch.long, device=device)
    w = mu.clone()
    rows = torch.arange(num_classes, device=device)
    for _ in range(max_iterations):
        active = ranked < target
        if not active.any():
            break
        scores = torch.einsum("cd,cnd->cn", w, padded).masked_fill(~valid, -torch.inf)
        pick = scores.argmax(dim=1)
        new = active & (ranks[rows, pick] < 0)
        ranks[rows[new], pick[new]] = ranked[new]
        ranked += new.long()
        w = torch.where(active[:, None], w + mu - padded[rows, pick], w)
    return ranks[labels, slot].cpu()


def select_easy(features: torch.Tensor, labels: torch.Tensor, n: int,
                classnames: list[str] | None = None) -> np.ndarray:
    """Stage e: the first ``n`` images of every class in herding order (sorted indices); a class with
    fewer than ``n`` images is an error naming it."""
    ranks = herding_ranks(features, labels, num_ranks=n).double()
    return first_per_class(labels.numpy(), torch.where(ranks < 0, torch.inf, ranks).numpy(), n, classnames)


def select_hard(features: torch.Tensor, labels: torch.Tensor, wrong: torch.Tensor, n: int) -> np.ndarray:
    """Stage h: per class, the ``n`` misclassified images that herding ranks last (sorted indices).

    A class with fewer than ``n`` ranked mistakes gives all of them."""
    ranks = herding_ranks(features, labels)
    labels, wrong = labels.cpu(), wrong.cpu()
    eligible = wrong.bool() & (ranks >= 0)
    # sort eligible samples by (class, rank descending); keep each class's first n
    key = torch.where(eligible, -ranks.double(), torch.inf)
    order = np.lexsort((key.numpy(), labels.numpy()))
    lab = labels.numpy()[order]
    counts = np.bincount(lab, minlength=int(labels.max()) + 1)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank_in_class = np.arange(len(order)) - starts[lab]
    keep = (rank_in_class < n) & eligible.numpy()[order]
    return np.sort(order[keep])
