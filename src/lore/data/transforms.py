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


# VPT's preprocessing of VTAB-1k from TFDS (tf.image.resize to img_size x img_size, bilinear, aspect
# ratio not kept, no crop, /255, ImageNet mean and std): the default of --format vtab-tfds
VPT_VTAB = {"resize": "squash", "interpolation": "bilinear", "mean": (0.485, 0.456, 0.406),
            "std": (0.229, 0.224, 0.225)}


def eval_transform(img_size: int, data_config: dict) -> T.Compose:
    """Resize (by the backbone's crop_pct) + center crop; ``resize: squash``: VPT's VTAB resize."""
    if data_config.get("resize") == "squash":
        # resized as a float tensor without antialiasing: TensorFlow's tf.image.resize (half-pixel
        # bilinear, antialias=False); PIL's bilinear would low-pass when shrinking and round to uint8
        return T.Compose([
            T.ToTensor(),
            T.Resize((img_size, img_size), interpolation=InterpolationMode.BILINEAR, antialias=False),
            T.Normalize(data_config["mean"], data_config["std"]),
        ])
    return T.Compose([
        T.Resize(eval_resize(img_size, data_config), interpolation=_interp(data_config.get("interpolation", "bicubic"))),
        T.CenterCrop(img_size),
        T.ToTensor(),
        T.Normalize(data_config["mean"], data_config["std"]),
    ])
