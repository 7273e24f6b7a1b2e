"""``--bn-mode``: how the White Box's BatchNorm layers are treated while training and at test time.

* ``train``: proper train mode; test time uses the running statistics (momentum 0.1), which after
  the few steps of a few-shot run still lie close to their initial values (0, 1).
* ``reference``: the reference code's (eval mode from epoch 2 on); handled in the training loop.
* ``recalibrate``: train mode, and before every evaluation the running statistics are re-estimated
  as the average over all training images (precise BN) at the test-time transform.
* ``freeze``: the running statistics average the batches of the first K steps exactly (cumulative
  average), then BatchNorm normalises with those fixed statistics in training and at test time
  alike; dropout stays in train mode.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def batch_norms(model: nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


def set_frozen(model: nn.Module, frozen: bool) -> None:
    """``freeze`` mode: before the K-th step, exact averaging of the batch statistics; after, fixed."""
    for bn in batch_norms(model):
        bn.momentum = None  # cumulative average over the batches seen so far
        bn.train(model.training and not frozen)


@torch.no_grad()
def recalibrate(model: nn.Module, loader, device: torch.device) -> int:
    """Re-estimate every BatchNorm's running statistics over ``loader``; returns the images seen.

    Only the statistics change: parameters, dropout and the model's own mode are left as they were."""
    norms = batch_norms(model)
    if not norms:
        return 0
    was_training = model.training
    momenta = [bn.momentum for bn in norms]
    model.eval()
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    seen = 0
    for images, _, _ in loader:
        if len(images) < 2:  # a batch of one has no batch statistics
            continue
        model(images.to(device))
        seen += len(images)
    for bn, momentum in zip(norms, momenta):
        bn.momentum = momentum
    model.train(was_training)
    return seen
