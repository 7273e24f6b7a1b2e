"""VTAB-1k read from a TensorFlow Datasets data dir (--format vtab-tfds), checked against tiny TFDS
folders written here from a literal description of the layout and of VPT's split rules:

- ``<data_dir>/<dataset>/[<config>/]<version>/dataset_info.json`` lists each split with its
  ``shardLengths`` (strings, as TFDS writes int64 in JSON); the records are tf.train.Example
  protos in ``<dataset>-<split>.tfrecord-0000i-of-0000N`` files, in shard order;
- train800 = train[:800]; CIFAR-100 / SVHN val200 = train[0.9 n : 0.9 n + 200] (n = train size),
  test = test; dSprites val200 = train[0.8 n : 0.8 n + 200], test = train[0.8 n + 0.1 n :], x position
  0..31 into 16 bins (x // 2), images 0/1 masks shown as 0/255; smallNORB val200 = test[:200],
  test = test[50 %:]; KITTI val200 = validation[:200], label = distance z of the closest car / van /
  truck (types 0, 1, 2): z <= 8 m -> 0, <= 20 m -> 1, <= 999 m -> 2, no vehicle -> 3.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

tfrecord = pytest.importorskip("tfrecord")

from conftest import lore_cli  # noqa: E402
from lore.data.datasets import load_dataset, load_image  # noqa: E402


def png(index: int, channels: int = 3) -> bytes:
    """A 4x4 image whose pixels name the record: (index % 256, index // 256, 7)."""
    if channels == 1:  # a dSprites-like 0/1 mask: the first pixel is index % 2
        pixels = np.zeros((4, 4), np.uint8)
        pixels[0, 0] = index % 2
        pixels[3, 3] = 1
    else:
        pixels = np.zeros((4, 4, 3), np.uint8)
        pixels[..., 0], pixels[..., 1], pixels[..., 2] = index % 256, index // 256, 7
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def write_tfds(folder: Path, name: str, splits: dict[str, list[int]], record=None) -> None:
    """splits: {split: shard lengths}; record(split, index) -> {feature: (value, type)}."""
    folder.mkdir(parents=True, exist_ok=True)
    info = {"name": name, "version": folder.name,
            "splits": [{"name": s, "shardLengths": [str(n) for n in lengths]} for s, lengths in splits.items()]}
    (folder / "dataset_info.json").write_text(json.dumps(info))
    if record is None:
        return
    for split, lengths in splits.items():
        index = 0
        for shard, length in enumerate(lengths):
            writer = tfrecord.TFRecordWriter(str(folder / f"{name}-{split}.tfrecord-{shard:05d}-of-{len(lengths):05d}"))
            for _ in range(length):
                writer.write(record(split, index))
                index += 1
            writer.close()


def pixel_id(path: str) -> int:
    arr = np.asarray(load_image(path))
    return int(arr[0, 0, 0]) + 256 * int(arr[0, 0, 1])


def plain(split: str, index: int) -> dict:
    return {"image": (png(index), "byte"), "label": (index % 10, "int")}


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_cifar100_lists_follow_vpt_90_percent_rule_across_shards(tmp_path: Path) -> None:
    data = tmp_path / "tfds"
    write_tfds(data / "cifar100" / "3.0.2", "cifar100", {"train": [700, 700, 600], "test": [30]},
               lambda s, i: {"image": (png(i + (5000 if s == "test" else 0)), "byte"), "label": (i % 100, "int"),
                             "id": (b"x", "byte")})
    final = load_dataset(str(data / "cifar"), "vtab-tfds")
    assert len(final.classnames) == 100
    train, val, test = final.splits["train"], final.splits["val"], final.splits["test"]
    assert (len(train), len(val), len(test)) == (1000, 200, 30)
    # train800 = records 0..799, val200 = records 1800..1999 (0.9 * 2000 = 1800), in shard order
    assert [pixel_id(p) for p, _ in train[:3]] == [0, 1, 2]
    assert [pixel_id(p) for p, _ in train[799:802]] == [799, 1800, 1801]
    assert [y for _, y in train] == [i % 100 for i in range(800)] + [i % 100 for i in range(1800, 2000)]
    assert val == train[800:]
    assert [pixel_id(p) for p, _ in test] == list(range(5000, 5030))
    tune = load_dataset(str(data / "cifar"), "vtab-tfds-tune")
    assert tune.splits["train"] == train[:800] and tune.splits["test"] == val
    assert "val" not in tune.splits


def test_svhn_val200_after_its_90_percent_cut(tmp_path: Path) -> None:
    data = tmp_path / "tfds"
    write_tfds(data / "svhn_cropped" / "3.0.0", "svhn_cropped", {"train": [2100], "test": [5]}, plain)
    got = load_dataset(str(data / "svhn"), "vtab-tfds").splits
    # 90 * 2100 // 100 = 1890: val200 = train[1890:2090]
    assert [pixel_id(p) for p, _ in got["val"]] == list(range(1890, 2090))
    assert [y for _, y in got["val"]] == [i % 10 for i in range(1890, 2090)]
    assert len(got["test"]) == 5


def test_dsprites_location_bins_and_masks(tmp_path: Path) -> None:
    data = tmp_path / "tfds"
    write_tfds(data / "dsprites" / "2.0.0", "dsprites", {"train": [1000, 1000]},
               lambda s, i: {"image": (png(i, channels=1), "byte"), "label_x_position": (i % 32, "int"),
                             "label_orientation": (i % 40, "int")})
    got = load_dataset(str(data / "dsprites_loc"), "vtab-tfds").splits
    # val200 = train[1600:1800] (80 %), test = train[1800:] (80 % + 10 %)
    assert (len(got["train"]), len(got["val"]), len(got["test"])) == (1000, 200, 200)
    assert [y for _, y in got["train"][:800]] == [(i % 32) // 2 for i in range(800)]
    assert [y for _, y in got["test"]] == [(i % 32) // 2 for i in range(1800, 2000)]
    first = np.asarray(load_image(got["test"][1][0]))  # record 1801: first pixel 1 -> 255, grey as RGB
    assert first.shape == (4, 4, 3) and first[0, 0].tolist() == [255, 255, 255] and first[0, 1].tolist() == [0, 0, 0]
    ori = load_dataset(str(data / "dsprites_ori"), "vtab-tfds").splits
    # orientation 0..39 into 16 bins: floor(o / 2.5)
    assert [y for _, y in ori["train"][:40]] == [int(np.floor(o / 2.5)) for o in range(40)]


def test_smallnorb_azimuth_val_from_test_and_second_half_as_test(tmp_path: Path) -> None:
    data = tmp_path / "tfds"
    write_tfds(data / "smallnorb" / "2.0.0", "smallnorb", {"train": [800], "test": [250, 250]},
               lambda s, i: {"image": (png(i + (1000 if s == "test" else 0)), "byte"),
                             "label_azimuth": (i % 18, "int"), "label_elevation": (i % 9, "int")})
    got = load_dataset(str(data / "smallnorb_azi"), "vtab-tfds").splits
    assert [pixel_id(p) for p, _ in got["val"]] == list(range(1000, 1200))
    assert [pixel_id(p) for p, _ in got["test"]] == list(range(1250, 1500))  # test[50 %:] of 500
    assert [y for _, y in got["test"]] == [i % 18 for i in range(250, 500)]


def test_kitti_closest_vehicle_distance(tmp_path: Path) -> None:
    # (object types, z of each object) -> expected label
    scenes = [([0], [5.0], 0), ([1, 0], [30.0, 10.0], 1), ([2], [30.0], 2), ([3, 4], [2.0, 3.0], 3),
              ([0], [8.0], 0), ([0, 3], [20.5, 1.0], 2)]

    def record(split: str, i: int) -> dict:
        types, zs, _ = scenes[i % len(scenes)]
        location = [v for z in zs for v in (1.0, 2.0, z)]
        return {"image": (png(i), "byte"), "objects/type": (types, "int"), "objects/location": (location, "float")}

    data = tmp_path / "tfds"
    write_tfds(data / "kitti" / "3.2.0", "kitti", {"train": [800], "validation": [200], "test": [6]}, record)
    got = load_dataset(str(data / "kitti"), "vtab-tfds").splits
    assert [y for _, y in got["test"]] == [label for _, _, label in scenes]
    assert (len(got["train"]), len(got["val"])) == (1000, 200)


def test_too_small_a_split_and_missing_task_are_one_line_errors(tmp_path: Path, capsys) -> None:
    data = tmp_path / "tfds"
    write_tfds(data / "cifar100" / "3.0.2", "cifar100", {"train": [900], "test": [3]}, plain)
    args = ["train", "--data", str(data / "cifar"), "--format", "vtab-tfds", "--out", str(tmp_path / "run")]
    assert lore_cli(*args) == 2
    assert "too few" in capsys.readouterr().err
    assert lore_cli("train", "--data", str(data / "svhn"), "--format", "vtab-tfds", "--out", str(tmp_path / "r")) == 2
    assert "no TFDS svhn_cropped" in capsys.readouterr().err


def test_a_task_written_both_ways_gives_the_same_images_in_the_same_order(tmp_path: Path) -> None:
    data = tmp_path / "tfds"
    write_tfds(data / "svhn_cropped" / "3.0.0", "svhn_cropped", {"train": [2000], "test": [7]}, plain)
    # the image export of the same task, written losslessly (PNG) as images/<list>/NNNNNN.png + lists
    export = tmp_path / "vtab-1k" / "svhn"
    rows = {"train800": range(800), "val200": range(1800, 2000), "test": range(7)}
    for name, indices in rows.items():
        (export / "images" / name).mkdir(parents=True)
        lines = []
        for k, i in enumerate(indices):
            (export / "images" / name / f"{k:06d}.png").write_bytes(png(i))
            lines.append(f"images/{name}/{k:06d}.png {i % 10}")
        (export / f"{name}.txt").write_text("\n".join(lines) + "\n")
    (export / "train800val200.txt").write_text((export / "train800.txt").read_text() + (export / "val200.txt").read_text())
    a = load_dataset(str(data / "svhn"), "vtab-tfds").splits
    b = load_dataset(str(export), "vtab").splits
    for split in ("train", "val", "test"):
        assert [y for _, y in a[split]] == [y for _, y in b[split]]
        assert all(np.array_equal(np.asarray(load_image(p)), np.asarray(load_image(q)))
                   for (p, _), (q, _) in zip(a[split], b[split]))
