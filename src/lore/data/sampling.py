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
    # the class list, not the labels present, says how many classes there are
    counts = np.bincount(labels, minlength=len(classnames) if classnames else int(labels.max()) + 1)
    # a class with no image at all was let through by --allow-missing-classes
    short = np.flatnonzero((counts < n) & (counts > 0))
    if short.size:
        c = int(short[0])
        name = classnames[c] if classnames else str(c)
        smallest = int(np.flatnonzero(counts > 0)[np.argmin(counts[counts > 0])])
        small_name = classnames[smallest] if classnames else str(smallest)
        raise LoreError(f"--shots {n}: class {name!r} has only {counts[c]} training image(s); lower --shots "
                        f"to at most {counts[smallest]} (the smallest class, {small_name!r}, has that many)")
    order = np.lexsort((np.asarray(keys), labels))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank_in_class = np.arange(len(labels)) - starts[labels[order]]
    return np.sort(order[rank_in_class < n])


class EpochBatchSampler(torch.utils.data.Sampler):
    """Global batches for one epoch as lists of ``(index, augmentation seed)``, this rank's share.

    The permutation and the seeds depend only on (seed, epoch), so every rank agrees on the global
    batch, and a resumed run can start at ``start_step`` without replaying earlier batches. Rank r
    takes positions r, r+W, ... of each global batch.

    A last batch that would give some process fewer than two images (fewer than ``2 * world``
    images) is *folded* into the batch before it, which grows by that remainder: every image is
    seen every epoch, and no process ever runs a one-image batch, which BatchNorm (the LORE White
    Box) cannot train on. The rule depends only on (n, batch size, world), so a resumed run and
    every DDP rank see the same batches. Fewer than ``2 * world`` images in all is refused
    (``steps() == 0``).
    """

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int, rank: int = 0,
                 world: int = 1, start_step: int = 0):
        self.n, self.batch_size, self.rank, self.world = n, batch_size, rank, world
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        self.perm = torch.randperm(n, generator=g)
        self.seeds = torch.randint(0, 2**62, (n,), generator=g)
        self.start_step = start_step

    def steps(self) -> int:
        if self.n < 2 * self.world:
            return 0
        full, rest = divmod(self.n, self.batch_size)
        if full == 0:
            return 1  # one batch of all n images
        return full + (1 if rest >= 2 * self.world else 0)

    def bounds(self, step: int) -> tuple[int, int]:
        """Positions [start, stop) of the global batch at ``step`` in the epoch's permutation."""
        start = step * self.batch_size
        stop = self.n if step == self.steps() - 1 else min(start + self.batch_size, self.n)
        return start, stop

    def global_batch(self, step: int) -> int:
        """Images in the global batch at ``step`` (the loss is averaged over these)."""
        start, stop = self.bounds(step)
        return stop - start

    def __len__(self) -> int:
        return max(self.steps() - self.start_step, 0)

    def __iter__(self):
        for step in range(self.start_step, self.steps()):
            sl = slice(*self.bounds(step))
            idx, seeds = self.perm[sl][self.rank::self.world], self.seeds[sl][self.rank::self.world]
            yield list(zip(idx.tolist(), seeds.tolist()))


def batch_norm_layers(model: torch.nn.Module) -> list[str]:
    """Names of the trainable BatchNorm layers of ``model`` (they need two images per batch)."""
    return [name for name, m in model.named_modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
            and any(p.requires_grad for p in m.parameters(recurse=False))]


def check_batch_for_norm(model: torch.nn.Module, batch_size: int, world: int = 1) -> None:
    """BatchNorm cannot train on one image per process: refuse such a batch size up front."""
    layers = batch_norm_layers(model)
    if layers and batch_size < 2 * world:
        raise LoreError(f"--batch-size {batch_size}: this model trains BatchNorm layers ({layers[0]}, "
                        f"...), which need at least 2 images per batch on each of the {world} "
                        f"process(es); use --batch-size {2 * world} or more")


class ShardedSampler(torch.utils.data.Sampler):
    """Evaluation order: rank r reads indices r, r+W, ...; no padding, so no sample counts twice."""

    def __init__(self, n: int, rank: int = 0, world: int = 1):
        self.indices = list(range(rank, n, world))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self):
        return iter(self.indices)
