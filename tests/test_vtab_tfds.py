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
    from conftest import TINY_BACKBONE

    args = ["train", *TINY_BACKBONE, "--device", "cpu", "--data", str(data / "cifar"), "--format", "vtab-tfds",
            "--out", str(tmp_path / "run")]
    assert lore_cli(*args) == 2
    assert "too few" in capsys.readouterr().err
    assert lore_cli(*args[:-6], "--data", str(data / "svhn"), "--format", "vtab-tfds", "--out", str(tmp_path / "r")) == 2
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


# VPT's TFDS sources of the 19 tasks (dataset[/config]/version, splits) as its data code names them
NINETEEN = {
    "caltech101/3.0.1": ("caltech101", {"train": [3060], "test": [6084]}),
    "cifar100/3.0.2": ("cifar100", {"train": [50000], "test": [10000]}),
    "dtd/3.0.1": ("dtd", {"train": [1880], "validation": [1880], "test": [1880]}),
    "oxford_flowers102/2.1.1": ("oxford_flowers102", {"train": [1020], "validation": [1020], "test": [6149]}),
    "oxford_iiit_pet/3.2.0": ("oxford_iiit_pet", {"train": [3680], "test": [3669]}),
    "svhn_cropped/3.0.0": ("svhn_cropped", {"train": [73257], "test": [26032]}),
    "sun397/tfds/4.0.0": ("sun397", {"train": [76128], "validation": [10875], "test": [21750]}),
    "patch_camelyon/2.0.0": ("patch_camelyon", {"train": [262144], "validation": [32768], "test": [32768]}),
    "eurosat/rgb/2.0.0": ("eurosat", {"train": [27000]}),
    "resisc45/3.0.0": ("resisc45", {"train": [31500]}),
    "diabetic_retinopathy_detection/btgraham-300/3.0.0": (
        "diabetic_retinopathy_detection", {"train": [35126], "validation": [10906], "test": [42670]}),
    "clevr/3.1.0": ("clevr", {"train": [70000], "validation": [15000], "test": [15000]}),
    "dmlab/2.0.1": ("dmlab", {"train": [65550], "validation": [22628], "test": [22735]}),
    "kitti/3.2.0": ("kitti", {"train": [6347], "validation": [423], "test": [711]}),
    "dsprites/2.0.0": ("dsprites", {"train": [737280]}),
    "smallnorb/2.0.0": ("smallnorb", {"train": [24300], "test": [24300]}),
}


def test_paper_vtab_plan_finds_19_tasks_in_a_tfds_dir_and_counts_from_shard_lengths(tmp_path: Path, capsys) -> None:
    data = tmp_path / "tfds"
    for folder, (name, splits) in NINETEEN.items():
        write_tfds(data / folder, name, splits)  # dataset_info.json only: the plan reads no record
    assert lore_cli("paper", "vtab", "--data-root", data, "--out", tmp_path / "o", "--plan", "--no-measure",
                    "--vtab-source", "tfds", "--methods", "linear") == 0
    text = capsys.readouterr().out
    assert "MISSING" not in text and "TensorFlow Datasets source" in text
    assert text.count("train800 800, val200 200") == 19
    # test lists: CIFAR's test split; dSprites train[737280 * 90 // 100:]; smallNORB test[50 %:];
    # EuroSAT train[27000 * 80 // 100:]; Clevr its validation split
    for task, test in (("cifar", 10000), ("dsprites_loc", 73728), ("smallnorb_ele", 12150), ("eurosat", 5400),
                       ("clevr_dist", 15000)):
        assert any(line.split()[0] == task and line.endswith(f"test {test})") for line in text.splitlines())
    # 19 tasks x (40 tuning runs x (800 x 100 epochs + 200) + 5 seeds x 1000 x 100 epochs) + test images
    tests = 6084 + 10000 + 1880 + 6149 + 3669 + 26032 + 21750 + 32768 + 5400 + 6300 + 42670 + 15000 * 2 + \
        22735 + 711 + 73728 * 2 + 12150 * 2
    assert f"{19 * (40 * (800 * 100 + 200) + 5 * 1000 * 100) + 5 * tests:,} images" in text


def test_paper_vtab_from_tfds_records_the_source(tmp_path: Path) -> None:
    from conftest import TINY_BACKBONE
    import yaml

    data = tmp_path / "tfds"
    write_tfds(data / "svhn_cropped" / "3.0.0", "svhn_cropped", {"train": [2000], "test": [10]}, plain)
    out = tmp_path / "out"
    assert lore_cli("paper", "vtab", "--data-root", data, "--out", out, "--vtab-source", "tfds", "--datasets", "svhn",
                    "--methods", "linear", "--seeds", "1", "--lrs", "1", "--wds", "0", "--epochs", "1",
                    "--batch-size", "100", "--shots-cap", "1", *TINY_BACKBONE, "--device", "cpu") == 0
    assert "--vtab-source tfds" in (out / "table.md").read_text()
    assert json.loads((out / "table.json").read_text())["vtab_source"] == "tfds"
    config = next((out / "runs").rglob("final/*/seed1/config.yaml")).read_text()
    assert yaml.safe_load(config.split("\n", 1)[1])["format"] == "vtab-tfds"


def test_data_check_reports_classes_missing_from_train800_and_histograms(tmp_path: Path, capsys) -> None:
    task = tmp_path / "vtab-1k" / "kitti"  # 4 classes
    (task / "images").mkdir(parents=True)
    (task / "images" / "a.png").write_bytes(png(0))
    lists = {"train800": [0, 0, 2], "val200": [1, 3], "test": [0, 1, 2, 3, 3]}
    lists["train800val200"] = lists["train800"] + lists["val200"]
    for name, labels in lists.items():
        (task / f"{name}.txt").write_text("".join(f"images/a.png {y}\n" for y in labels))
    assert lore_cli("data", "check", "vtab", "--root", tmp_path / "vtab-1k") == 0
    out = capsys.readouterr().out
    assert "classes missing from train800: 1, 3" in out
    assert "train800             3 images,   2 classes | 0:2 1:0 2:1 3:0" in out
    assert "test                 5 images,   4 classes | 0:1 1:1 2:1 3:2" in out


def test_a_truncated_shard_is_one_line_and_leaves_no_cache(tmp_path: Path, capsys) -> None:
    data = tmp_path / "tfds"
    write_tfds(data / "kitti" / "3.2.0", "kitti", {"train": [800], "validation": [200], "test": [3]},
               lambda s, i: {"image": (png(i), "byte"), "objects/type": ([], "int"), "objects/location": ([], "float")})
    shard = data / "kitti" / "3.2.0" / "kitti-train.tfrecord-00000-of-00001"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    assert lore_cli("train", "--data", str(data / "kitti"), "--format", "vtab-tfds", "--out", str(tmp_path / "r")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "kitti-train.tfrecord-00000-of-00001" in err, err
    cached = list((tmp_path / "cache").rglob("labels.json"))
    assert cached == []


def test_clevr_count_and_closest_distance_labels(tmp_path: Path) -> None:
    # objects' depth (pixel_coords z) per scene -> count label (objects - 3) and distance bin
    # (thresholds 0, 8, 8.5, 9, 9.5, 10, 100: the last one strictly below the nearest depth)
    scenes = [([12.0, 9.2, 11.0], 0, 3), ([7.0, 9.0, 9.0, 9.0], 1, 0), ([10.5] * 10, 7, 5), ([8.5, 11, 12, 13, 14], 2, 1)]

    def record(split: str, i: int) -> dict:
        depths = scenes[i % len(scenes)][0]
        return {"image": (png(i), "byte"), "objects/size": ([0] * len(depths), "int"),
                "objects/pixel_coords": ([v for z in depths for v in (10.0, 20.0, z)], "float")}

    data = tmp_path / "tfds"
    write_tfds(data / "clevr" / "3.1.0", "clevr", {"train": [2000], "validation": [4], "test": [1]}, record)
    count = load_dataset(str(data / "clevr_count"), "vtab-tfds").splits
    dist = load_dataset(str(data / "clevr_dist"), "vtab-tfds").splits
    assert [y for _, y in count["test"]] == [c for _, c, _ in scenes]  # the TFDS validation split
    assert [y for _, y in dist["test"]] == [d for _, _, d in scenes]
    assert [pixel_id(p) for p, _ in count["val"]][:2] == [1800, 1801]


def test_vtab_tfds_runs_use_vpts_square_bilinear_resize_and_imagenet_statistics() -> None:
    """VPT: tf.image.resize to size x size (bilinear, half-pixel centres, no antialias), /255,
    mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225); no crop, aspect ratio not kept."""
    from types import SimpleNamespace

    import torch

    from lore.data import eval_transform
    from lore.runs import run_data_config

    cfg = SimpleNamespace(crop_pct=0.875, train_crop_pct=None, format="vtab-tfds")
    backbone = SimpleNamespace(data_config={"mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bicubic"})
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)
    got = eval_transform(16, run_data_config(cfg, backbone))(Image.fromarray(image))

    def axis(n: int):  # source coordinate of each of 16 outputs, clamped to the image
        src = np.clip((np.arange(16) + 0.5) * n / 16 - 0.5, 0, n - 1)
        lo = np.floor(src).astype(int)
        return lo, np.minimum(lo + 1, n - 1), src - lo
    (y0, y1, wy), (x0, x1, wx) = axis(6), axis(10)
    img = image / 255.0
    rows = img[y0] * (1 - wy)[:, None, None] + img[y1] * wy[:, None, None]
    want = rows[:, x0] * (1 - wx)[None, :, None] + rows[:, x1] * wx[None, :, None]
    want = (want - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    assert got.shape == (3, 16, 16)
    assert torch.allclose(got, torch.from_numpy(want).permute(2, 0, 1).float(), atol=1e-5)


def test_the_source_is_named_in_the_plan_and_fgvc_refuses_tfds(tmp_path: Path, capsys) -> None:
    assert lore_cli("paper", "vtab", "--data-root", tmp_path, "--out", tmp_path / "o", "--plan", "--no-measure",
                    "--methods", "linear") == 0
    assert "data: VTAB-1k from the PETL repositories' image export" in capsys.readouterr().out
    assert lore_cli("paper", "fgvc", "--data-root", tmp_path, "--out", tmp_path / "o", "--plan", "--no-measure",
                    "--vtab-source", "tfds") == 2
    assert "--vtab-source tfds" in capsys.readouterr().err
