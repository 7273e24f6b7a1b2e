"""VTAB-1k read straight from a TensorFlow Datasets data directory, as VPT read it, without
TensorFlow: ``<data_dir>/<dataset>/<config>/<version>/`` holds ``dataset_info.json`` and the
TFRecord shards ``<name>-<split>.tfrecord-00000-of-000NN`` of tf.train.Example records.

``--format vtab-tfds --data DATA_DIR/TASK`` (TASK one of the 19 VTAB-1k task names, e.g.
``DATA_DIR/cifar``; no such folder needs to exist): train800val200 to train (val200 its val part),
the task's test split to test; ``--format vtab-tfds-tune``: train800 to train, val200 as the test.
The lists are the slices of ``vtab_tasks.TASKS``, bounds computed from the split sizes that
``dataset_info.json`` records (its shard lengths), records taken in shard order (TFDS's order
without file shuffling). The selected images are written once, as stored (PNG/JPEG bytes, never
re-encoded), under the user cache, keyed by a hash of the task's ``dataset_info.json``, the shard
sizes and the split rule, so every sample is an ordinary image path. dSprites' 0/1 masks are
scaled to 0/255 as VPT's code does.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import LoreError
from . import vtab_tasks as vt
from .layout import cache_dir
from .splits import Sample, Splits
from .vtab import ALIASES, class_names

PROTOCOLS = {"vtab-tfds": {"train": ("train800", "val200"), "val": ("val200",), "test": ("test",)},
             "vtab-tfds-tune": {"train": ("train800",), "test": ("val200",)}}
LISTS = ("train800", "val200", "test")


def _tfrecord():
    try:
        from tfrecord import example_pb2, reader
    except ImportError:
        raise LoreError("--format vtab-tfds needs the tfrecord package: pip install 'lore-vit[vtab]'") from None
    return example_pb2, reader


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else -1 for p in name.split("."))


@dataclass
class Source:
    """One TFDS dataset version folder and what its dataset_info.json says about the splits."""
    folder: Path
    info: dict
    shard_lengths: dict[str, list[int]]

    def size(self, split: str) -> int:
        return sum(self.shard_lengths[split])

    def shards(self, split: str) -> list[Path]:
        files = sorted(self.folder.glob(f"*-{split}.tfrecord-*-of-*"))
        if len(files) != len(self.shard_lengths[split]):
            raise LoreError(f"{self.folder}: dataset_info.json lists {len(self.shard_lengths[split])} shard(s) "
                            f"of the {split} split but {len(files)} file(s) *-{split}.tfrecord-* are there; re-copy the "
                            "dataset folder (lore reads TFRecord shards, not TFDS's array_record files)")
        return files


def task_of(name: str) -> str | None:
    name = ALIASES.get(name.lower(), name.lower())
    return name if name in vt.TASKS else None


def locate(data_dir: Path, task: str) -> Path | None:
    """The task's TFDS version folder: the highest version matching VPT's pattern (None: absent)."""
    spec = vt.TASKS[task]
    base = data_dir / spec.dataset / (spec.config or "")
    if not base.is_dir():
        return None
    found = [d for d in base.iterdir() if d.is_dir() and fnmatch.fnmatch(d.name, spec.version)
             and (d / "dataset_info.json").is_file()]
    return max(found, key=lambda d: _version_key(d.name)) if found else None


def read_source(folder: Path) -> Source:
    path = folder / "dataset_info.json"
    try:
        info = json.loads(path.read_text())
        lengths = {s["name"]: [int(n) for n in s["shardLengths"]] for s in info["splits"]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise LoreError(f"{path}: not a TFDS dataset_info.json with the splits' shardLengths ({e}); "
                        "prepare the dataset with tensorflow_datasets >= 4") from None
    return Source(folder, info, lengths)


def list_bounds(task: str, source: Source) -> dict[str, tuple[str, int, int]]:
    """{list: (TFDS split, start, stop)} of train800 / val200 / test, from the split sizes."""
    spec = vt.TASKS[task]
    out = {}
    for name, rule in (("train800", spec.train800), ("val200", spec.val200), ("test", spec.test)):
        if rule.split not in source.shard_lengths:
            raise LoreError(f"{source.folder / 'dataset_info.json'}: no {rule.split!r} split, which VTAB-1k's "
                            f"{name} of {task} is taken from")
        n = source.size(rule.split)
        start, stop = rule.bounds(n)
        if not 0 <= start < stop <= n:
            raise LoreError(f"{source.folder}: the {rule.split} split holds {n} records, too few for "
                            f"VTAB-1k's {name} of {task} ({rule.split}[{start}:{stop}])")
        out[name] = (rule.split, start, stop)
    return out


def list_sizes(data_dir: Path, task: str) -> dict[str, int] | None:
    """Images per list from dataset_info.json alone (no record read); None when the task is absent."""
    folder = locate(data_dir, task)
    if folder is None:
        return None
    return {name: stop - start for name, (_, start, stop) in list_bounds(task, read_source(folder)).items()}


def _records(source: Source, split: str, start: int, stop: int):
    """The parsed tf.train.Example records ``split[start:stop]``, in shard order."""
    example_pb2, reader = _tfrecord()
    first = 0
    for path, length in zip(source.shards(split), source.shard_lengths[split]):
        if first + length > start and first < stop:
            seen = 0
            for seen, raw in enumerate(reader.tfrecord_iterator(str(path)), 1):
                index = first + seen - 1
                if index >= stop:
                    break
                if index >= start:
                    yield example_pb2.Example.FromString(bytes(raw)).features.feature
            else:
                if seen < min(length, stop - first):
                    raise LoreError(f"{path}: holds {seen} records, dataset_info.json says {length}; the "
                                    "shard is truncated: re-copy it")
        first += length
        if first >= stop:
            return


def _values(feature, key: str, path: Path) -> np.ndarray:
    if key not in feature:
        raise LoreError(f"{path}: a record has no feature {key!r}; is this the TFDS version VPT reads?")
    f = feature[key]
    kind = f.WhichOneof("kind")
    if kind is None:  # an empty list (a KITTI image without objects)
        return np.asarray([])
    return np.asarray(getattr(f, kind).value) if kind != "bytes_list" else np.asarray(f.bytes_list.value, dtype=object)


def _last_below(thresholds: tuple[float, ...], values: np.ndarray) -> np.ndarray:
    """Index of the last threshold strictly below each value (VPT's max(where(thr - d < 0)))."""
    return np.searchsorted(np.asarray(thresholds), values, side="left") - 1


def labels(task: str, features: list, where: Path) -> np.ndarray:
    """The task's labels of the records, derived as VPT's preprocessing functions derive them."""
    spec = vt.TASKS[task]
    if spec.label == "kitti_closest_vehicle":
        nearest = []
        for f in features:
            kind = _values(f, "objects/type", where)
            z = _values(f, "objects/location", where).reshape(-1, 3)[:, 2]
            nearest.append(min(z[kind < vt.KITTI_VEHICLE_TYPES].min(initial=1000.0), 1000.0))
        return _last_below(vt.KITTI_VEHICLE_THRESHOLDS, np.asarray(nearest))
    if spec.label == "clevr_count":
        return np.asarray([len(_values(f, "objects/size", where)) for f in features]) - vt.CLEVR_COUNT_OFFSET
    if spec.label == "clevr_closest_distance":
        nearest = np.asarray([_values(f, "objects/pixel_coords", where).reshape(-1, 3)[:, 2].min() for f in features])
        return _last_below(vt.CLEVR_DISTANCE_THRESHOLDS, nearest)
    raw = np.asarray([_values(f, spec.label, where)[0] for f in features])
    if spec.bins:  # dSprites: neighbouring values grouped, floor(value / (values / classes))
        return np.floor(raw.astype(np.float32) / np.float32(spec.bins / spec.classes)).astype(np.int64)
    return raw.astype(np.int64)


def _image_file(data: bytes, scale: bool) -> tuple[bytes, str]:
    """The stored bytes and their extension; dSprites' 0/1 masks rewritten (lossless) as 0/255."""
    ext = ".png" if data[:8] == b"\x89PNG\r\n\x1a\n" else ".jpg" if data[:3] == b"\xff\xd8\xff" else ".img"
    if not scale:
        return data, ext
    with Image.open(io.BytesIO(data)) as im:
        pixels = np.asarray(im).astype(np.uint16) * 255
    buf = io.BytesIO()
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue(), ".png"


def _digest(task: str, source: Source, bounds: dict) -> str:
    h = hashlib.sha256(json.dumps([task, repr(vt.TASKS[task]), sorted(bounds.items())]).encode())
    h.update((source.folder / "dataset_info.json").read_bytes())
    for split in sorted({s for s, _, _ in bounds.values()}):
        for path in source.shards(split):
            h.update(f"{path.name}:{path.stat().st_size}".encode())
    return h.hexdigest()[:16]


def _materialise(task: str, source: Source, bounds: dict, target: Path) -> None:
    """Write the lists' images and labels.json into ``target`` atomically (a temp folder renamed)."""
    _tfrecord()  # the package's own message first, where it is not installed
    from google.protobuf.message import DecodeError  # tfrecord's dependency

    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        listed = {}
        for name, (split, start, stop) in bounds.items():
            (tmp / name).mkdir(parents=True)
            try:
                features = list(_records(source, split, start, stop))
            except (RuntimeError, ValueError, EOFError, struct.error, DecodeError) as e:
                raise LoreError(f"{source.folder}: cannot read the {split} shards ({type(e).__name__}: {e}); "
                                "re-copy the dataset folder") from None
            ys = labels(task, features, source.folder)
            rows = []
            for i, (f, y) in enumerate(zip(features, ys)):
                data, ext = _image_file(bytes(_values(f, "image", source.folder)[0]), task.startswith("dsprites"))
                (tmp / name / f"{i:06d}{ext}").write_bytes(data)
                rows.append([f"{name}/{i:06d}{ext}", int(y)])
            listed[name] = rows
        (tmp / "labels.json").write_text(json.dumps(listed))
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, target)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if not target.is_dir():  # another process may have written the same folder first
            raise LoreError(f"cannot write the VTAB-1k images of {task} under {target.parent} ({e})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_lists(data_dir: Path, task: str) -> tuple[dict[str, list[Sample]], Path]:
    """{train800, val200, test: [(image path, label)]} of the task, and its TFDS version folder."""
    folder = locate(data_dir, task)
    if folder is None:
        spec = vt.TASKS[task]
        where = data_dir / spec.dataset / (spec.config or "")
        raise LoreError(f"--data {data_dir / task}: no TFDS {spec.dataset}{'/' + spec.config if spec.config else ''}"
                        f" version {spec.version} with dataset_info.json under {where}; prepare it with "
                        "tensorflow_datasets or point --data at the TFDS data dir + the task name")
    source = read_source(folder)
    bounds = list_bounds(task, source)
    target = cache_dir() / "vtab-tfds" / task / _digest(task, source, bounds)
    if not (target / "labels.json").is_file():
        _materialise(task, source, bounds, target)
    listed = json.loads((target / "labels.json").read_text())
    return {name: [(str(target / p), int(y)) for p, y in listed[name]] for name in LISTS}, folder


def load_vtab_tfds(path: Path, protocol: str = "vtab-tfds") -> Splits:
    """``path`` = TFDS data dir / VTAB-1k task name."""
    task = task_of(path.name)
    if task is None:
        raise LoreError(f"--data {path}: --format {protocol} needs TFDS_DATA_DIR/TASK with TASK one of "
                        f"{', '.join(vt.TASKS)}")
    lists, folder = read_lists(path.parent, task)
    spec = vt.TASKS[task]
    for name, rows in lists.items():
        bad = next((y for _, y in rows if not 0 <= y < spec.classes), None)
        if bad is not None:
            raise LoreError(f"{folder}: a {name} record of {task} has label {bad}, outside 0..{spec.classes - 1}; "
                            "is this the TFDS version VPT reads?")
    splits = {split: [s for name in names for s in lists[name]] for split, names in PROTOCOLS[protocol].items()}
    return Splits(class_names(task, spec.classes), splits,
                  split=f"VTAB-1k from TFDS {folder.relative_to(path.parent)} ({' / '.join(PROTOCOLS[protocol]['train'])} "
                        f"-> {PROTOCOLS[protocol]['test'][0]})")
