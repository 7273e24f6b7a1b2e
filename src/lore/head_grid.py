"""A linear probe's learning-rate x weight-decay grid trained as many heads on one pass of features.

Every cell of the grid trains the same head from the same initial weights on the same cached
features in the same order; only its SGD's lr and wd differ. So the heads train side by side, each
in its own parameter group of one SGD, each on its own loss: a head's gradient is exactly what its
own run computes (the summed loss passes 1.0 to every head), and its update is the same
element-wise SGD step. The result of each head equals, bit for bit, the head ``lore train --method
linear`` would train for that (lr, wd) with the same options (single process, cached features:
``--aug none`` or ``flip``, or ``rrc-flip`` with ``--feature-views``).

Grids call :func:`train_heads` with the run's context, the model built as ``lore train`` builds it
and the cached training set (:func:`lore.features.training_dataset`).
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import default_collate

from .data import EpochBatchSampler
from .features import FeatureDataset
from .train.loop import learning_rate


def train_heads(ctx, model: nn.Module, dataset: FeatureDataset, pairs: list[tuple[float, float]],
                epochs: int | None = None) -> list[nn.Module]:
    """One trained copy of ``model.head`` per (lr, wd) in ``pairs``."""
    cfg = ctx.cfg
    epochs = cfg.epochs if epochs is None else epochs
    heads = nn.ModuleList(copy.deepcopy(model.head) for _ in pairs).to(ctx.device)
    optimizer = torch.optim.SGD([{"params": [p for p in h.parameters() if p.requires_grad], "lr": lr,
                                  "weight_decay": wd} for h, (lr, wd) in zip(heads, pairs)],
                                lr=pairs[0][0], momentum=cfg.momentum)
    n = len(dataset)
    steps_per_epoch = EpochBatchSampler(n, cfg.batch_size, cfg.seed, 0, 0, 1).steps()
    global_step = 0
    heads.train()
    for epoch in range(epochs):
        sampler = EpochBatchSampler(n, cfg.batch_size, cfg.seed, epoch, 0, 1)
        for step, batch in enumerate(sampler):
            feats, targets, _ = default_collate([dataset[item] for item in batch])
            feats, targets = feats.to(ctx.device), targets.to(ctx.device)
            for group, (lr, _) in zip(optimizer.param_groups, pairs):
                group["lr"] = learning_rate(cfg, lr, epoch, global_step, steps_per_epoch, epochs, cfg.warmup_epochs)
            global_batch = sampler.global_batch(step)
            # each head's loss as its own run computes it (sum / global batch)
            loss = sum(F.cross_entropy(head(feats).float(), targets, reduction="none").sum() * 1 / global_batch
                       for head in heads)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            global_step += 1
    return list(heads.eval())
