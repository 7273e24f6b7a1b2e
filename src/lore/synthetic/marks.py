"""Local-mark images: the situation LORE is built for.

Every image shares the same kind of cluttered background (random lines and boxes); its class is
a small glyph (a letter) drawn at a random position in a random colour. Global statistics (mean
colour, texture) carry no class information; only the few patches under the glyph do.
"""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

LETTERS = string.ascii_uppercase


def class_name(letter: str) -> str:
    return f"letter {letter}"


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def render(letter: str, size: int, rng: np.random.Generator, glyph: int | None = None) -> Image.Image:
    """One ``size`` x ``size`` RGB image of ``letter`` on clutter."""
    glyph = glyph or max(8, size * 7 // 24)
    bg = tuple(int(v) for v in rng.integers(90, 170, 3))
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(6, 12))):  # clutter: lines and boxes in muted colours
        c = tuple(int(v) for v in rng.integers(40, 220, 3))
        x0, y0, x1, y1 = (int(v) for v in rng.integers(0, size, 4))
        if rng.random() < 0.5:
            draw.line((x0, y0, x1, y1), fill=c, width=int(rng.integers(1, 3)))
        else:
            draw.rectangle((min(x0, x1), min(y0, y1), min(x0, x1) + size // 8, min(y0, y1) + size // 8),
                           outline=c)
    font = _font(glyph)
    x, y = (int(v) for v in rng.integers(1, size - glyph - 1, 2))
    # light or dark glyph with an opposite outline: readable on any clutter, no class colour
    light = rng.random() < 0.5
    color = tuple(int(v) for v in (rng.integers(200, 256, 3) if light else rng.integers(0, 56, 3)))
    draw.text((x, y - glyph // 6), letter, fill=color, font=font, stroke_width=1,
              stroke_fill=(0, 0, 0) if light else (255, 255, 255))
    return img


def write_marks(root: Path, letters: str, n_train: int, n_test: int, size: int = 32,
                seed: int = 0) -> Path:
    """ImageFolder ``root/{train,test}/letter X/NNNN.png`` for the given letters."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        if n == 0:
            continue
        for letter in letters:
            folder = root / split / class_name(letter)
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                render(letter, size, rng).save(folder / f"{i:04d}.png")
    return root
