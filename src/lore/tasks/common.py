"""What the three downstream protocols share: the feature extractor around a model (B-B or a
trained run), image-to-tensor conversion with the backbone's own normalisation, and the results
file."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

# re-exported for the tasks: any image file -> 8-bit RGB, or a LoreError naming the file
from ..data.datasets import load_image  # noqa: F401
from ..errors import LoreError
from ..io import atomic_write_json, check_output_dir, is_run_dir


def _number(cast: type, check, what: str):
    """An argparse type: ``cast`` the text, then require ``check(value)``."""
    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value
    return parse


positive_int = _number(int, lambda v: v >= 1, "a positive integer")
non_negative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _number(float, lambda v: v > 0 and math.isfinite(v), "a positive number")


class Extractor:
    """Frozen features of a model for the downstream protocols.

    ``model`` is anything built by ``lore.build_model`` (B-B, LORE, VPT, ...): it has
    ``features(images) -> {"cls": (B, D), "patches": (B, h, w, D), ...}`` and ``black_box``.
    Inputs must be multiples of the patch size (timm runs with ``dynamic_img_size=True``).

    ``layer``: the block whose patch tokens are returned (0-based, -1 = the last). The last
    block's tokens pass the backbone's final LayerNorm, as in classification; an earlier block's
    are taken as that block leaves them (the dense-descriptor protocols that pick a block).
    """

    def __init__(self, model: nn.Module, device: torch.device | str | None = None, layer: int = -1):
        self.model = model.eval()
        self.black_box = model.black_box
        depth = int(self.black_box.depth)
        if not -depth <= layer < depth:
            raise LoreError(f"--layer {layer}: the backbone has {depth} blocks "
                            f"(0..{depth - 1}, or -1 for the last)")
        self.layer = layer % depth
        self._hidden = () if self.layer == depth - 1 else (self.layer,)
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        config = self.black_box.data_config
        self.mean = torch.tensor(config["mean"], dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(config["std"], dtype=torch.float32).view(3, 1, 1)
        self.patch_size = int(self.black_box.patch_size)

    @property
    def method(self) -> str:
        return str(getattr(self.model, "method", "b-b"))

    @property
    def backbone(self) -> str:
        return str(getattr(self.black_box, "name", "") or type(self.black_box.vit).__name__)

    def to_tensor(self, image: Image.Image) -> torch.Tensor:
        """8-bit RGB PIL image -> normalised (3, H, W) float tensor."""
        x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy())
        x = x.permute(2, 0, 1).float().div_(255.0)
        return (x - self.mean) / self.std

    def crop_to_patches(self, x: torch.Tensor) -> torch.Tensor:
        """Keep the top-left region whose sides are multiples of the patch size (what a ViT with
        a stride-p patch convolution sees anyway: the remainder pixels never enter a patch)."""
        p = self.patch_size
        H, W = x.shape[-2:]
        if H < p or W < p:
            raise LoreError(f"an image of {W}x{H} pixels is smaller than one {p}x{p} patch; "
                            "raise --imsize / --short-side")
        return x[..., : H - H % p, : W - W % p]

    @torch.inference_mode()
    def features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, H, W) normalised images -> {"cls": (B, D), "patches": (B, h, w, D)} in float32."""
        if images.ndim == 3:
            images = images.unsqueeze(0)
        images = images.to(self.device, non_blocking=True)
        if not self._hidden:
            out = self.model.features(images)
            return {"cls": out["cls"].float(), "patches": out["patches"].float()}
        out = self.model.features(images, hidden_layers=self._hidden)
        return {"cls": out["cls"].float(), "patches": out["hidden"][self.layer].float()}

    def describe(self) -> dict[str, str]:
        return {"method": self.method, "backbone": self.backbone}


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """--out and the model choice (``--run RUN_DIR | --backbone NAME``, see ``lore.runs``)."""
    from ..runs import add_model_arguments

    parser.add_argument("--out", required=True, help="output directory (results.json is written there)")
    add_model_arguments(parser)


def add_layer_argument(parser: argparse.ArgumentParser, default_means: str) -> None:
    """--layer for the dense protocols: whose patch tokens are read (see :class:`Extractor`)."""
    parser.add_argument("--layer", type=int, default=-1,
                        help=f"block whose patch tokens are used, 0-based (default -1: the last, after the "
                             f"final norm, {default_means})")


def extractor_from_args(args: argparse.Namespace) -> Extractor:
    from ..runs import model_from_args

    model = model_from_args(args)
    return Extractor(model, layer=getattr(args, "layer", -1))


def check_out_dir(out: str | Path) -> Path:
    """``--out`` is a writable folder (or can be made), and not a run's own folder: results.json
    must not land among a run's files (checked before any compute)."""
    out = check_output_dir(out)
    if is_run_dir(out):
        raise LoreError(f"--out {out} is a training run's directory; write task results to their own "
                        f"folder outside it, e.g. {out.parent / (out.name + '-tasks')}")
    return out


def _json_safe(value):
    """NaN (a difficulty without any positive, an empty category) -> null, so the file is JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_results(out: str | Path, results: dict) -> Path:
    return atomic_write_json(Path(out) / "results.json", _json_safe(results))


def fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"
