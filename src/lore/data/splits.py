"""What every dataset reader returns: class names and, per split, ``(absolute image path, label)``."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import LoreError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif")
SPLITS = ("train", "val", "test")

Sample = tuple[str, int]


@dataclass
class Splits:
    classnames: list[str]
    splits: dict[str, list[Sample]] = field(default_factory=dict)
    root: str = ""
    split: str = ""  # which split definition was read (paper datasets: shown by `lore data check`)
    note: str = ""   # said once when that split is not the paper's, with the file that would make it so
    sizes: str = "expected"  # the catalog entry holding that split's sizes (`lore data check`)

    def get(self, split: str) -> list[Sample]:
        if split not in self.splits or not self.splits[split]:
            have = [s for s in SPLITS if self.splits.get(s)]
            raise LoreError(f"dataset {self.root} has no {split!r} split (it has: {', '.join(have)})")
        return self.splits[split]
