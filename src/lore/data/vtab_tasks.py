"""VTAB-1k's 19 tasks as VPT reads them from TensorFlow Datasets (github.com/KMnP/vpt,
``src/data/vtab_datasets/``, Google's task_adaptation data code): per task the TFDS dataset,
config and version, the three VTAB-1k lists as slices of the TFDS splits, and the label.

Every slice bound is computed from the TFDS split sizes in ``dataset_info.json`` the way VPT's code
computes it, so a tiny ``dataset_info.json`` exercises the real rule: train800 is always
``train[:800]``; val200 is 200 images from the task's own validation part (e.g. CIFAR
``train[45000:45200]``, the 200 after its 90 % train/val cut; ``validation[:200]`` where TFDS has a
validation split; smallNORB ``test[:200]``); the test list is the task's own test split.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Bound:
    """A record index in a TFDS split of ``n`` records: ``sum(p * n // 100 for p in floors) +
    round(half_percent * n / 100) + offset``; ``floors`` are VPT's integer percent cuts
    (``TRAIN_SPLIT_PERCENT * count // 100``), ``percent`` a TFDS ``[p%:]`` slice (rounded)."""
    floors: tuple[int, ...] = ()
    percent: int = 0
    offset: int = 0

    def at(self, n: int) -> int:
        # TFDS rounds a percent slice boundary to the closest record (Python's round)
        return sum(p * n // 100 for p in self.floors) + round(self.percent * n / 100) + self.offset


@dataclass(frozen=True)
class Slice:
    """``split[start:stop]`` of a TFDS split (``stop`` None: to the end)."""
    split: str
    start: Bound = Bound()
    stop: Bound | None = None

    def bounds(self, n: int) -> tuple[int, int]:
        return self.start.at(n), n if self.stop is None else self.stop.at(n)


@dataclass(frozen=True)
class Task:
    dataset: str            # TFDS dataset name (its folder under the data dir)
    config: str | None      # TFDS config folder, if the dataset has configs
    version: str            # TFDS version pattern VPT asks for ("3.*.*" or exact)
    classes: int
    label: str              # a feature name, or a derived label (LABELS in vtab_tfds)
    val200: Slice
    test: Slice
    bins: int = 0           # dSprites: the feature's number of values, grouped into `classes` bins
    train800: Slice = Slice("train", Bound(), Bound(offset=800))


def _after(*floors: int) -> Slice:
    """200 images after a percent cut of the TFDS train split."""
    return Slice("train", Bound(floors), Bound(floors, offset=200))


FIRST_200_VAL = Slice("validation", Bound(), Bound(offset=200))
WHOLE_TEST = Slice("test")

TASKS: dict[str, Task] = {
    # natural
    "caltech101": Task("caltech101", None, "3.*.*", 102, "label", _after(90), WHOLE_TEST),
    "cifar": Task("cifar100", None, "3.*.*", 100, "label", _after(90), WHOLE_TEST),
    "dtd": Task("dtd", None, "3.*.*", 47, "label", FIRST_200_VAL, WHOLE_TEST),
    "oxford_flowers102": Task("oxford_flowers102", None, "2.*.*", 102, "label", FIRST_200_VAL, WHOLE_TEST),
    "oxford_iiit_pet": Task("oxford_iiit_pet", None, "3.*.*", 37, "label", _after(80), WHOLE_TEST),
    "svhn": Task("svhn_cropped", None, "3.*.*", 10, "label", _after(90), WHOLE_TEST),
    "sun397": Task("sun397", "tfds", "4.*.*", 397, "label", FIRST_200_VAL, WHOLE_TEST),
    # specialized
    "patch_camelyon": Task("patch_camelyon", None, "2.*.*", 2, "label", FIRST_200_VAL, WHOLE_TEST),
    "eurosat": Task("eurosat", "rgb", "2.*.*", 10, "label", _after(60), Slice("train", Bound((60, 20)))),
    "resisc45": Task("resisc45", None, "3.*.*", 45, "label", _after(60), Slice("train", Bound((60, 20)))),
    "diabetic_retinopathy": Task("diabetic_retinopathy_detection", "btgraham-300", "3.*.*", 5, "label",
                                 FIRST_200_VAL, WHOLE_TEST),
    # structured
    "clevr_count": Task("clevr", None, "3.*.*", 8, "clevr_count", _after(90), Slice("validation")),
    "clevr_dist": Task("clevr", None, "3.*.*", 6, "clevr_closest_distance", _after(90), Slice("validation")),
    "dmlab": Task("dmlab", None, "2.0.1", 6, "label", FIRST_200_VAL, WHOLE_TEST),
    "kitti": Task("kitti", None, "3.2.0", 4, "kitti_closest_vehicle", FIRST_200_VAL, WHOLE_TEST),
    "dsprites_loc": Task("dsprites", None, "2.*.*", 16, "label_x_position", _after(80),
                         Slice("train", Bound((80, 10))), bins=32),
    "dsprites_ori": Task("dsprites", None, "2.*.*", 16, "label_orientation", _after(80),
                         Slice("train", Bound((80, 10))), bins=40),
    "smallnorb_azi": Task("smallnorb", None, "2.*.*", 18, "label_azimuth",
                          Slice("test", Bound(), Bound(offset=200)), Slice("test", Bound(percent=50))),
    "smallnorb_ele": Task("smallnorb", None, "2.*.*", 9, "label_elevation",
                          Slice("test", Bound(), Bound(offset=200)), Slice("test", Bound(percent=50))),
}

# thresholds of the derived distance labels: the label is the last threshold below the distance
KITTI_VEHICLE_THRESHOLDS = (-100.0, 8.0, 20.0, 999.0)   # metres; no vehicle counts as 1000 m
KITTI_VEHICLE_TYPES = 3                                 # object types 0..2: car, van, truck
CLEVR_DISTANCE_THRESHOLDS = (0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0)
CLEVR_COUNT_OFFSET = 3                                  # scenes hold 3..10 objects: label = count - 3
