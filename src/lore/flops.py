"""Parameter and FLOP counts (torch's own FLOP counter) of a model at inference.

Conventions (stated in final.json and ``--dry-run``):
- GFLOPs: ``torch.utils.flop_counter`` on one image, inference path: 2 FLOPs per multiply-add of
  matrix products, convolutions and attention; element-wise work (norms, activations, softmax,
  additions) is not counted.
- Trainable %: ``trainable_pct`` against the model as built (frozen image tower + the method's own
  parameters); ``trainable_pct_image_tower`` against image tower + trainable parameters; and, for CLIP
  backbones, ``trainable_pct_clip`` against image tower + text tower + trainable parameters, the
  paper's convention (its 5.7 % for LORE on CLIP ViT-B/16).
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> dict:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable_params": trainable, "total_params": total,
            "trainable_pct": round(100.0 * trainable / max(total, 1), 4)}


GFLOPS_COUNT = ("2 x multiply-adds of matmul/conv/attention (torch.utils.flop_counter), one image, "
                "inference path; norms, activations and softmax not counted")


def parameter_shares(model: nn.Module, text_tower_params: int | None = None) -> dict:
    """Trainable share against the image tower and, given its size, against the whole CLIP model."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    image = sum(p.numel() for p in model.black_box.parameters())
    own = trainable if not model.black_box.trainable else 0  # 'full' trains the tower itself
    shares = {"image_tower_params": image,
              "trainable_pct_image_tower": round(100.0 * trainable / max(image + own, 1), 4)}
    if text_tower_params:
        shares["text_tower_params"] = text_tower_params
        shares["trainable_pct_clip"] = round(100.0 * trainable / max(image + text_tower_params + own, 1), 4)
    return shares


def text_tower_params(spec: str) -> int:
    """Parameters of the CLIP text tower of a ``clip:MODEL/TAG`` spec (built without weights)."""
    from .knowledge import load_open_clip
    from .models.coop import open_clip_arg, weightless

    logging.disable(logging.WARNING)  # open_clip warns that a weightless build has no weights
    try:
        clip, _ = load_open_clip(open_clip_arg(weightless(spec)))
    finally:
        logging.disable(logging.NOTSET)
    return sum(p.numel() for p in clip.parameters()) - sum(p.numel() for p in clip.visual.parameters())


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
