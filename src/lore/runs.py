"""Getting a model for analysis and downstream tasks: a trained run (``--run``) or a plain
backbone (``--backbone``, the B-B baseline)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn as nn

from .checkpoint import load_run
from .errors import LoreError


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    src = group.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="run directory written by `lore train` (its features, e.g. LORE)")
    src.add_argument("--backbone", help="timm ViT name: the plain frozen backbone (B-B)")
    group.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=True,
                       help="load pre-trained backbone weights (default: yes)")
    group.add_argument("--checkpoint", help="local backbone weights (.safetensors/.pth/.npz)")
    group.add_argument("--backbone-args", help="key=value,... for timm.create_model")
    group.add_argument("--bb", action="store_true",
                       help="with --run: use the run's plain backbone (B-B) instead of its method")
    group.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto")


def saved_config(run_dir: str | Path, **overrides):
    """The TrainConfig a run recorded (``RUN/config.yaml``; defaults where it has none), with
    ``overrides`` (how to run now: batch size, device, ...) and no resume."""
    from . import config as config_mod

    path = Path(run_dir) / "config.yaml"
    saved = config_mod.load_yaml(str(path)) if path.is_file() else {}
    return config_mod.make({**saved, "resume": None, **overrides}, source=str(path))


def resolve_device(name: str) -> torch.device:
    """``--device``: cpu, cuda, cuda:N or auto (CUDA when available)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise LoreError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise LoreError(f"--device {name!r}: expected cpu, cuda, cuda:N or auto")
    return device


def model_from_args(args: argparse.Namespace) -> nn.Module:
    """The eval-mode model the arguments describe, on ``args.device``."""
    from .models import build_model

    device = resolve_device(getattr(args, "device", "auto"))
    if getattr(args, "run", None):
        model, _ = load_run(args.run, device, backbone_checkpoint=getattr(args, "checkpoint", None))
        if getattr(args, "bb", False):
            model = build_model("b-b", model.black_box, 0)
        return model.to(device).eval()
    torch.manual_seed(0)
    model = build_model("b-b", args.backbone, 0, pretrained=args.pretrained,
                        checkpoint=args.checkpoint, backbone_args=args.backbone_args)
    return model.to(device).eval()
