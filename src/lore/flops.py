"""Parameter and FLOP counts (torch's own FLOP counter) of a model at inference."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> dict:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable_params": trainable, "total_params": total,
            "trainable_pct": round(100.0 * trainable / max(total, 1), 4)}


@torch.no_grad()
def count_gflops(model: nn.Module, img_size: int, device: str | torch.device = "cpu") -> float:
    """Inference GFLOPs for one image (multiply-adds count 2), the eval-mode forward pass."""
    was_training = model.training
    model.eval()
    x = torch.zeros(1, 3, img_size, img_size, device=device)
    with FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return counter.get_total_flops() / 1e9
