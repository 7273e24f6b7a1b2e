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
    files: dict[str, str] = field(default_factory=dict)  # split -> the file or folder listing it (messages)

    def get(self, split: str) -> list[Sample]:
        if split not in self.splits or not self.splits[split]:
            have = [s for s in SPLITS if self.splits.get(s)]
            raise LoreError(f"dataset {self.root} has no {split!r} split (it has: {', '.join(have)})")
        return self.splits[split]

    def test_split(self) -> tuple[str, list[Sample]]:
        """The split a run scores as its test set: ``test`` where the reader has one (an empty one is
        an error, never a reason to score something else), else ``val`` only when none of its images
        is in the training pool (an ImageNet-style train/ + val/ folder). A run never reports images
        it trained on as its test accuracy."""
        if "test" in self.splits:
            if not self.splits["test"]:
                where = self.files.get("test") or f"dataset {self.root}"
                raise LoreError(f"{where}: the test split lists no image; a run needs test images it did "
                                "not train on (fill the test list, or point --data at a complete copy)")
            return "test", self.splits["test"]
        val = self.splits.get("val") or []
        if not val:
            raise LoreError(f"dataset {self.root} has no test split (nor a val split to test on); add one, "
                            "or use --holdout to hold images out of a folder without splits")
        pool = {p for p, _ in self.splits.get("train") or []}
        shared = next((p for p, _ in val if p in pool), None)
        if shared is not None:
            raise LoreError(f"dataset {self.root} has no test split and its val images are part of the "
                            f"training pool (e.g. {shared}); a run cannot be tested on images it trained on")
        return "val", val
