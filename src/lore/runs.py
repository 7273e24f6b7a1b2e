"""A run as the other commands see it: its recorded options (``saved_config``, with the defaults
that depend on the backbone resolved as training resolved them) and the data config of its test
transform; and the model for analysis and downstream tasks: a trained run (``--run``) or a plain
backbone (``--backbone``, the B-B baseline)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn as nn

from .checkpoint import load_run
from .errors import LoreError
from . import rundir


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The --run / --backbone options of the analysis and downstream-task commands."""
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

    path = Path(run_dir) / rundir.CONFIG
    saved = config_mod.load_yaml(str(path)) if path.is_file() else {}
    cfg = config_mod.make({**saved, "resume": None, **overrides}, source=str(path))
    if "img_size" in saved:
        _check_img_size(Path(run_dir), cfg.img_size)
    return cfg


def _check_img_size(run_dir: Path, img_size: int) -> None:
    """model.json records the size the model was trained at (its position embeddings, its prompts'
    layout); an edited config.yaml must not feed it images of another size."""
    from .io import read_json

    model = run_dir / rundir.MODEL
    meta = read_json(model, "run description") if model.is_file() else None
    trained = meta.get("img_size") if isinstance(meta, dict) else None
    if isinstance(trained, int) and not isinstance(trained, bool) and trained != img_size:
        raise LoreError(f"{run_dir / rundir.CONFIG}: img_size {img_size} differs from {trained} in "
                        f"{model.name}, the size the model was trained at; set img_size: {trained} again")


def resolve_backbone_defaults(cfg):
    """Fill the options whose default depends on the backbone, so config.yaml records the choice.

    - the method's own (``Method.defaults``; LORE's wrong class p, ``negative``: ``zeroshot`` when
      the backbone has a CLIP text tower, whatever the knowledge source, else ``model``).
    - ``crop_pct`` (test-time crop): 1.0 for CLIP, as the reference evaluates (Resize(224) +
      CenterCrop(224)); otherwise the backbone's own pre-trained crop fraction.
    """
    import dataclasses

    from .backbone import has_clip_projection, pretrained_crop_pct
    from .models.registry import get as method_of

    clip = has_clip_projection(cfg.backbone)
    method = method_of(cfg.method)
    own = method.defaults(cfg, clip) if method.defaults else {}
    crop_pct = cfg.crop_pct if cfg.crop_pct is not None else 1.0 if clip else pretrained_crop_pct(cfg.backbone)
    return dataclasses.replace(cfg, crop_pct=crop_pct, **own)


def run_data_config(cfg, black_box) -> dict:
    """The backbone's mean / std / interpolation with the run's test-time crop fraction."""
    data_config = dict(black_box.data_config)
    if cfg.crop_pct is not None:
        data_config["crop_pct"] = cfg.crop_pct
    if cfg.train_crop_pct is not None:
        data_config["train_crop_pct"] = cfg.train_crop_pct
    if str(getattr(cfg, "format", "")).startswith("vtab-tfds"):  # VPT's preprocessing of that source
        from .data.transforms import VPT_VTAB
        data_config.update(VPT_VTAB)
    return data_config


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
