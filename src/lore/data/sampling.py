"""Few-shot selection and the deterministic, resumable, rank-sharded training order."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import LoreError


def few_shot_indices(labels: list[int] | np.ndarray, shots: int, seed: int,
                     classnames: list[str] | None = None) -> np.ndarray:
    """``shots`` random indices per class, a pure function of (labels, shots, seed), sorted."""
    if shots < 1:
        raise LoreError(f"--shots must be >= 1, got {shots}")
    keys = np.random.default_rng(seed).random(len(labels))
    return first_per_class(labels, keys, shots, classnames)


def first_per_class(labels: list[int] | np.ndarray, keys: np.ndarray, n: int,
                    classnames: list[str] | None = None) -> np.ndarray:
    """The ``n`` indices of lowest ``key`` in every class, sorted by index.

    Vectorised: a stable sort by (label, key) lists each class's samples in key order, and a
    sample's rank within its class is its position minus where the class starts.
    """
    labels = np.asarray(labels)
    counts = np.bincount(labels, minlength=int(labels.max()) + 1)
    short = np.flatnonzero(counts < n)
    if short.size:
        c = int(short[0])
        name = classnames[c] if classnames else str(c)
        raise LoreError(f"--shots {n}: class {name!r} has only {counts[c]} training image(s); "
                        f"lower --shots to at most {counts[counts > 0].min()}")
    order = np.lexsort((np.asarray(keys), labels))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank_in_class = np.arange(len(labels)) - starts[labels[order]]
    return np.sort(order[rank_in_class < n])


class EpochBatchSampler(torch.utils.data.Sampler):
    """Global batches for one epoch as lists of ``(index, augmentation seed)``, this rank's share.

    The permutation and the seeds depend only on (seed, epoch), so every rank agrees on the global
    batch, and a resumed run can start at ``start_step`` without replaying earlier batches. Rank r
    takes positions r, r+W, ... of each global batch; a last batch smaller than W is dropped so
    that no rank is left without work.
    """

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int, rank: int = 0,
                 world: int = 1, start_step: int = 0):
        self.n, self.batch_size, self.rank, self.world = n, batch_size, rank, world
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        self.perm = torch.randperm(n, generator=g)
        self.seeds = torch.randint(0, 2**62, (n,), generator=g)
        self.start_step = start_step

    def steps(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full + (1 if rest >= self.world else 0)

    def __len__(self) -> int:
        return max(self.steps() - self.start_step, 0)

    def __iter__(self):
        for step in range(self.start_step, self.steps()):
            sl = slice(step * self.batch_size, (step + 1) * self.batch_size)
            idx, seeds = self.perm[sl][self.rank::self.world], self.seeds[sl][self.rank::self.world]
            yield list(zip(idx.tolist(), seeds.tolist()))


class ShardedSampler(torch.utils.data.Sampler):
    """Evaluation order: rank r reads indices r, r+W, ...; no padding, so no sample counts twice."""

    def __init__(self, n: int, rank: int = 0, world: int = 1):
        self.indices = list(range(rank, n, world))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self):
        return iter(self.indices)
