"""Train / test transforms with the backbone's own mean, std and interpolation."""

from __future__ import annotations

import math

from torchvision import transforms as T
from torchvision.transforms import InterpolationMode


def _interp(name: str) -> InterpolationMode:
    return {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR,
            "nearest": InterpolationMode.NEAREST}.get(name, InterpolationMode.BICUBIC)


def train_transform(img_size: int, data_config: dict, aug: str = "rrc-flip") -> T.Compose:
    """``rrc-flip``: RandomResizedCrop + horizontal flip (the paper's augmentation); ``flip``:
    resize + center crop (by ``train_crop_pct``, else the test-time crop) + flip, which the reference
    code uses for most datasets; ``none``: the test-time transform."""
    if aug == "none":
        return eval_transform(img_size, data_config)
    if aug == "flip":
        crop = data_config.get("train_crop_pct") or data_config.get("crop_pct")
        return T.Compose([eval_transform(img_size, {**data_config, "crop_pct": crop}), T.RandomHorizontalFlip()])
    return T.Compose([
        T.RandomResizedCrop(img_size, interpolation=_interp(data_config.get("interpolation", "bicubic"))),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(data_config["mean"], data_config["std"]),
    ])


def eval_resize(img_size: int, data_config: dict) -> int:
    """The shorter side the test images are resized to before the ``img_size`` center crop."""
    return math.floor(img_size / (data_config.get("crop_pct", 0.875) or 1.0))


def eval_transform(img_size: int, data_config: dict) -> T.Compose:
    """Resize (by the backbone's crop_pct) + center crop."""
    return T.Compose([
        T.Resize(eval_resize(img_size, data_config), interpolation=_interp(data_config.get("interpolation", "bicubic"))),
        T.CenterCrop(img_size),
        T.ToTensor(),
        T.Normalize(data_config["mean"], data_config["std"]),
    ])
