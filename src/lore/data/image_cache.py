"""Training images decoded once and kept in memory (``--cache-images auto|on|off``).

Few-shot training sets are small (a few thousand images at most) but are read for many epochs; a
JPEG decode costs more than the augmentation after it. The cache holds each image as the decoded
8-bit RGB :class:`PIL.Image.Image` at its stored (pre-crop) size, decoded once in the main process
before the loader's workers start (they inherit it), and the augmentation runs on it unchanged.

Why PIL images and not uint8 tensors with ``torchvision.transforms.v2``: the tensor resize kernels
(bicubic / bilinear with antialiasing) do not round like PIL's, so a run would no longer give the
numbers it gives without the cache. Keeping the decoded PIL image keeps every result bit-identical;
the time saved is the decode, which is most of a loader's work on full-size JPEGs.

``auto`` caches when the decoded images (width x height x 3 bytes each, read from the file headers)
fit in :data:`AUTO_SHARE` of the memory available now.
"""

from __future__ import annotations

import os

import torch
from PIL import Image

from .datasets import ImageDataset, load_image

# the share of the available memory --cache-images auto may fill
AUTO_SHARE = 0.25


def available_memory() -> int:
    """Bytes of memory available to new allocations (MemAvailable; free pages where there is none)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def decoded_bytes(samples: list) -> int:
    """The memory the decoded RGB images of ``samples`` take, from their headers (no decode)."""
    total = 0
    for path, _ in samples:
        try:
            with Image.open(path) as im:
                total += im.size[0] * im.size[1] * 3
        except Exception:  # an unreadable file is reported by the decode itself, with its name
            pass
    return total


def should_cache(mode: str, samples: list) -> bool:
    """--cache-images: ``on`` always, ``off`` never, ``auto`` when the decoded images fit the budget."""
    if mode == "auto":
        return decoded_bytes(samples) <= AUTO_SHARE * available_memory()
    return mode == "on"


class CachedImageDataset(ImageDataset):
    """:class:`ImageDataset` whose images are decoded once, up front."""

    def __init__(self, samples: list, transform=None):
        super().__init__(samples, transform)
        self.images = [load_image(path) for path, _ in samples]

    def __getitem__(self, item):
        index, seed = item if isinstance(item, tuple) else (item, None)
        image = self.images[index]
        if self.transform is not None:
            if seed is None:
                image = self.transform(image)
            else:  # the same per-sample draw as ImageDataset's
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    image = self.transform(image)
        return image, self.samples[index][1], index


def training_dataset(samples: list, transform, mode: str) -> ImageDataset:
    """The training set, its images decoded once when --cache-images allows it."""
    if should_cache(mode, samples):
        return CachedImageDataset(samples, transform)
    return ImageDataset(samples, transform)
