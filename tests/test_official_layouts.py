"""The paper's datasets in the layouts their official downloads unpack to.

Every fixture here is written from a literal description of the distributed files (the datasets'
READMEs, and the readers torchvision, TorchGeo and CoOp ship): file names, folder nesting, the
``.mat`` variables and their MATLAB types. Nothing is taken from ``lore.data``, so a wrong file or
folder name in a reader fails here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from conftest import TINY_BACKBONE, lore_cli


def jpg(path: Path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value % 256, np.uint8)).save(path)


def struct_array(rows: list[dict]) -> np.ndarray:
    """A 1 x N MATLAB struct array (what scipy writes from a structured numpy array)."""
    fields = list(rows[0])
    out = np.empty((1, len(rows)), dtype=[(f, object) for f in fields])
    for i, r in enumerate(rows):
        out[0, i] = tuple(r[f] for f in fields)
    return out


def cell_row(strings: list[str]) -> np.ndarray:
    out = np.empty((1, len(strings)), dtype=object)
    out[0, :] = strings
    return out


def load(name: str, folder: Path, **kw):
    from lore.data.catalog import load_paper_dataset
    return load_paper_dataset(name, folder, **kw)


# ------------------------------------------------------------------------------------------------
# Oxford Flowers-102 (VGG): 102flowers.tgz -> jpg/image_00001.jpg ...; imagelabels.mat holds
# `labels` (1 x 8189, class 1..102 of image k at position k); setid.mat holds `trnid`, `valid`,
# `tstid` (1 x N, 1-based image numbers). CoOp: oxford_flowers/{jpg/, split_zhou_OxfordFlowers.json},
# impaths relative to jpg/.

FLOWERS_CLASSES = 102


def write_flowers(root: Path) -> dict[str, list[int]]:
    """Three images per class: image 3c+1 train, 3c+2 val, 3c+3 test (class c, 0-based)."""
    labels = np.repeat(np.arange(1, FLOWERS_CLASSES + 1), 3).astype(np.uint8)
    for k in range(1, len(labels) + 1):
        jpg(root / "jpg" / f"image_{k:05d}.jpg", k)
    ids = {"trnid": list(range(1, len(labels) + 1, 3)), "valid": list(range(2, len(labels) + 1, 3)),
           "tstid": list(range(3, len(labels) + 1, 3))}
    savemat(root / "imagelabels.mat", {"labels": labels[None, :]})
    savemat(root / "setid.mat", {k: np.array(v, dtype=np.uint16)[None, :] for k, v in ids.items()})
    return ids


def test_flowers_official_layout_without_coop_split(tmp_path: Path, capsys) -> None:
    root = tmp_path / "flowers"
    write_flowers(root)
    data = load("flowers", root)
    assert len(data.classnames) == 102 and data.classnames[0] == "pink primrose"
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 204, "val": 102, "test": 102}
    # image 3c+3 is class c's test image
    assert data.splits["test"][5] == (str(root / "jpg" / "image_00018.jpg"), 5)
    assert data.splits["val"][0] == (str(root / "jpg" / "image_00002.jpg"), 0)
    assert "not the paper's split" in data.note and "split_zhou_OxfordFlowers.json" in data.note
    assert "setid.mat" in data.split


def test_flowers_prefers_coops_split_file_beside_the_folder(tmp_path: Path) -> None:
    root = tmp_path / "flowers"
    write_flowers(root)
    # CoOp's file one folder up: train/val/test lists of [path under jpg/, label, class name]
    coop = {"train": [[f"image_{3 * c + 1:05d}.jpg", c, f"flower {c}"] for c in range(102)],
            "val": [[f"image_{3 * c + 2:05d}.jpg", c, f"flower {c}"] for c in range(102)],
            "test": [[f"image_{3 * c + 3:05d}.jpg", c, f"flower {c}"] for c in range(0, 102)][:102]}
    coop["train"] += [[f"image_{3 * c + 3:05d}.jpg", c, f"flower {c}"] for c in range(10)]
    (tmp_path / "split_zhou_OxfordFlowers.json").write_text(json.dumps(coop))
    data = load("flowers", root)
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 214, "val": 102, "test": 102}
    assert data.note == "" and "split_zhou_OxfordFlowers.json" in data.split
    assert data.classnames[3] == "flower 3"  # the split file names its own classes


def test_flowers_under_coops_folder_name_in_a_data_root(tmp_path: Path) -> None:
    write_flowers(tmp_path / "oxford_flowers")
    data = load("flowers", tmp_path)  # the data root itself: the reader looks one folder down
    assert len(data.splits["test"]) == 102 and data.root == str(tmp_path / "oxford_flowers")


# ------------------------------------------------------------------------------------------------
# Stanford Cars: cars_train/00001.jpg, cars_test/00001.jpg; devkit/cars_meta.mat (`class_names`,
# 1 x 196 cell), devkit/cars_train_annos.mat and cars_test_annos_withlabels.mat (`annotations`,
# 1 x N struct with bbox_x1, bbox_y1, bbox_x2, bbox_y2, class (1-based), fname), the latter in the
# dataset folder (torchvision) or in devkit/. The other form: car_ims/000001.jpg and cars_annos.mat
# (`annotations` with relative_im_path, bbox_*, class, test; `class_names`).

CARS_CLASSES = 196


def cars_names() -> list[str]:
    return [f"Make{c} Model{c} 20{c % 100:02d}" for c in range(CARS_CLASSES)]


def annos(fnames: list[str], classes: list[int], key: str = "fname", **extra) -> np.ndarray:
    rows = [{"bbox_x1": 1, "bbox_y1": 1, "bbox_x2": 7, "bbox_y2": 7, "class": c, key: f,
             **{k: v[i] for k, v in extra.items()}} for i, (f, c) in enumerate(zip(fnames, classes))]
    return struct_array(rows)


def write_cars_devkit(root: Path, test_annos_in_devkit: bool = False) -> None:
    classes = list(range(1, CARS_CLASSES + 1))
    for split in ("train", "test"):
        names = [f"{i:05d}.jpg" for i in range(1, CARS_CLASSES + 1)]
        for n in names:
            jpg(root / f"cars_{split}" / n)
        where = root / "devkit" if split == "train" or test_annos_in_devkit else root
        file = "cars_train_annos.mat" if split == "train" else "cars_test_annos_withlabels.mat"
        where.mkdir(parents=True, exist_ok=True)
        # the test images' classes run backwards, so a reader mixing the two files is caught
        savemat(where / file, {"annotations": annos(names, classes if split == "train" else classes[::-1])})
    savemat(root / "devkit" / "cars_meta.mat", {"class_names": cell_row(cars_names())})


@pytest.mark.parametrize("test_annos_in_devkit", [False, True])
def test_cars_devkit_form(tmp_path: Path, test_annos_in_devkit: bool) -> None:
    root = tmp_path / "stanford_cars"
    write_cars_devkit(root, test_annos_in_devkit)
    data = load("cars", root)
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 196, "test": 196}
    assert data.classnames == cars_names()
    assert data.splits["train"][0] == (str(root / "cars_train" / "00001.jpg"), 0)
    assert data.splits["test"][0] == (str(root / "cars_test" / "00001.jpg"), 195)
    assert "not the paper's split" in data.note


def test_cars_car_ims_form_and_coop_split(tmp_path: Path) -> None:
    root = tmp_path / "cars"
    n = 2 * CARS_CLASSES
    paths = [f"car_ims/{i:06d}.jpg" for i in range(1, n + 1)]
    for p in paths:
        jpg(root / p)
    classes = [i % CARS_CLASSES + 1 for i in range(n)]
    test = [int(i >= CARS_CLASSES) for i in range(n)]
    savemat(root / "cars_annos.mat", {"annotations": annos(paths, classes, key="relative_im_path", test=test),
                                      "class_names": cell_row(cars_names())})
    data = load("cars", root)
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 196, "test": 196}
    assert data.splits["test"][1] == (str(root / "car_ims" / "000198.jpg"), 1)
    # CoOp's split file in the folder: its paths start at the dataset's folder
    coop = {"train": [[p, c - 1, "x"] for p, c in zip(paths[:196], classes)], "val": [],
            "test": [[p, c - 1, "x"] for p, c in zip(paths[196:], classes[196:])]}
    (root / "split_zhou_StanfordCars.json").write_text(json.dumps(coop))
    again = load("cars", root)
    assert again.note == "" and len(again.splits["test"]) == 196


# ------------------------------------------------------------------------------------------------
# EuroSAT (RGB): <Class>/<Class>_<n>.jpg, n = 1..count, unpacked as 2750/ (the first archive, CoOp's
# name) or EuroSAT_RGB/ (the current zenodo archive). No official split exists; CoOp's
# split_zhou_EuroSAT.json lists paths relative to 2750/.

EUROSAT = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture",
           "PermanentCrop", "Residential", "River", "SeaLake"]


def write_eurosat(root: Path, folder: str, per_class: int = 100) -> None:
    for c in EUROSAT:
        for n in range(1, per_class + 1):
            jpg(root / folder / c / f"{c}_{n}.jpg", n)


@pytest.mark.parametrize("folder", ["2750", "EuroSAT_RGB"])
def test_eurosat_either_archive_with_the_shipped_split(tmp_path: Path, folder: str) -> None:
    root = tmp_path / "eurosat"
    write_eurosat(root, folder)
    data = load("eurosat", root)
    pool, val, test = (data.splits[s] for s in ("train", "val", "test"))
    assert len(pool) + len(test) == 1000 and set(val) <= set(pool)
    assert not set(p for p, _ in pool) & set(p for p, _ in test)
    # CoOp's proportions per class (50 % train, 20 % val, 30 % test), here on 100 of the numbers
    for label, c in enumerate(EUROSAT):
        n_val = sum(y == label for _, y in val)
        n_test = sum(y == label for _, y in test)
        assert 8 <= n_val <= 35 and 15 <= n_test <= 45, (c, n_val, n_test)
        assert all(Path(p).parent.name == c for p, y in pool + test if y == label)
    assert "not the paper's split" in data.note and "EuroSAT has no official split" in data.note


def test_eurosat_with_coops_split_and_two_archives_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "eurosat"
    write_eurosat(root, "2750", per_class=3)
    coop = {s: [[f"{c}/{c}_{n}.jpg", i, c] for i, c in enumerate(EUROSAT)] for s, n in
            (("train", 1), ("val", 2), ("test", 3))}
    (root / "split_zhou_EuroSAT.json").write_text(json.dumps(coop))
    data = load("eurosat", root)
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 20, "val": 10, "test": 10}
    assert data.note == ""
    write_eurosat(root, "EuroSAT_RGB", per_class=1)
    from lore.errors import LoreError
    with pytest.raises(LoreError, match="both .*2750 and .*EuroSAT_RGB"):
        load("eurosat", root)


# ------------------------------------------------------------------------------------------------
# NWPU-RESISC45: NWPU-RESISC45/<class>/<class>_NNN.jpg (45 classes, 700 each). TorchGeo publishes a
# split: resisc45-train.txt, resisc45-val.txt, resisc45-test.txt, one file name per line.

RESISC45 = ["airplane", "airport", "baseball_diamond", "basketball_court", "beach", "bridge", "chaparral",
            "church", "circular_farmland", "cloud", "commercial_area", "dense_residential", "desert",
            "forest", "freeway", "golf_course", "ground_track_field", "harbor", "industrial_area",
            "intersection", "island", "lake", "meadow", "medium_residential", "mobile_home_park",
            "mountain", "overpass", "palace", "parking_lot", "railway", "railway_station",
            "rectangular_farmland", "river", "roundabout", "runway", "sea_ice", "ship", "snowberg",
            "sparse_residential", "stadium", "storage_tank", "tennis_court", "terrace",
            "thermal_power_station", "wetland"]


def write_resisc45_torchgeo(root: Path) -> Path:
    lists = {"train": [], "val": [], "test": []}
    for c in RESISC45:
        for n, split in ((1, "train"), (2, "train"), (3, "val"), (4, "test")):
            jpg(root / "NWPU-RESISC45" / c / f"{c}_{n:03d}.jpg", n)
            lists[split].append(f"{c}_{n:03d}.jpg")
    for split, names in lists.items():
        (root / f"resisc45-{split}.txt").write_text("\n".join(names) + "\n")
    return root / "resisc45-train.txt"


def test_resisc45_torchgeo_split_file(tmp_path: Path) -> None:
    split_file = write_resisc45_torchgeo(tmp_path / "resisc45")
    data = load("resisc45", tmp_path / "resisc45", split_file=str(split_file))
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 135, "val": 45, "test": 45}
    assert data.splits["test"][44] == (str(tmp_path / "resisc45/NWPU-RESISC45/wetland/wetland_004.jpg"), 44)
    assert "TorchGeo" in data.split


@pytest.mark.parametrize("removed", ["airplane", "mountain", "wetland"])  # first, middle and last label
def test_a_class_without_training_images_is_named(tmp_path: Path, removed: str, capsys) -> None:
    root = tmp_path / "resisc45"
    split_file = write_resisc45_torchgeo(root)
    for n in (1, 2, 3):  # its train and val images: the class is gone from the pool
        (root / "NWPU-RESISC45" / removed / f"{removed}_{n:03d}.jpg").unlink()
    for name in ("train", "val"):
        f = root / f"resisc45-{name}.txt"
        f.write_text("".join(ln + "\n" for ln in f.read_text().split() if not ln.startswith(removed + "_")))
    out = tmp_path / "run"
    args = ["train", *TINY_BACKBONE, "--method", "linear", "--dataset", "resisc45", "--data", root,
            "--split-file", split_file, "--shots", 1, "--epochs", 1, "--out", out]
    assert lore_cli(*args) == 2
    err = capsys.readouterr().err
    readable = removed.replace("_", " ")
    assert f"class '{readable}'" in err and "no image in the train split" in err and len(err.strip().splitlines()) == 1
    assert lore_cli(*args, "--allow-missing-classes") == 0  # for people who know why
    assert "warning:" in capsys.readouterr().err


def test_imagefolder_test_split_missing_a_class_is_named(colors: Path, tmp_path: Path, capsys) -> None:
    copy = tmp_path / "colors"
    shutil.copytree(colors, copy)
    shutil.rmtree(copy / "test" / "yellow")
    assert lore_cli("train", *TINY_BACKBONE, "--method", "linear", "--data", copy, "--shots", 1, "--epochs", 1,
                    "--out", tmp_path / "run") == 2
    assert "class 'yellow'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# CoOp's DATA/ folder names (DATASETS.md) and the archives' own folder names, under one data root


COOP_NAMES = ["oxford_flowers", "stanford_cars", "fgvc_aircraft", "eurosat", "ucf101", "dtd", "imagenet",
              "cifar-10-batches-py", "cifar-100-python", "stanford_dogs", "NWPU-RESISC45", "PatternNet"]


def test_paper_plan_finds_all_12_under_coop_and_archive_names(tmp_path: Path, capsys) -> None:
    for name in COOP_NAMES:
        (tmp_path / name).mkdir()
    assert lore_cli("paper", "table1", "--data-root", tmp_path, "--out", tmp_path / "o", "--plan", "--no-measure") == 0
    out = capsys.readouterr().out
    assert out.count(" found") == 12 and "MISSING" not in out
    (tmp_path / "flowers").mkdir()  # two candidates for one dataset: named, not guessed
    assert lore_cli("paper", "table1", "--data-root", tmp_path, "--out", tmp_path / "o", "--plan", "--no-measure") == 2
    err = capsys.readouterr().err
    assert "flowers" in err and "oxford_flowers" in err


def test_the_split_note_appears_exactly_when_coops_file_is_absent(tmp_path: Path, capsys) -> None:
    root = tmp_path / "flowers"
    write_flowers(root)
    for attempt, with_coop in enumerate((False, True)):
        if with_coop:
            coop = {s: [[f"image_{3 * c + k:05d}.jpg", c, f"flower {c}"] for c in range(102)]
                    for s, k in (("train", 1), ("val", 2), ("test", 3))}
            (root / "split_zhou_OxfordFlowers.json").write_text(json.dumps(coop))
        out = tmp_path / f"run{attempt}"
        assert lore_cli("train", *TINY_BACKBONE, "--method", "linear", "--dataset", "flowers", "--data", root,
                        "--shots", 1, "--epochs", 1, "--out", out) == 0
        err = capsys.readouterr().err
        config = (out / "config.yaml").read_text()
        assert err.count("not the paper's split") == (0 if with_coop else 1)
        assert ("# note:" in config) == (not with_coop) and config.startswith("# ")
        assert lore_cli("data", "check", "flowers", "--root", root) == 2  # a tiny copy: the sizes differ
        printed = capsys.readouterr().out
        assert ("\nsplit: CoOp's split_zhou_OxfordFlowers.json" in printed) == with_coop
        assert ("note:" in printed) == (not with_coop)


# ------------------------------------------------------------------------------------------------
# CIFAR-10: cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}, Python 2 pickles whose
# keys are bytes: b"data" (N x 3072 uint8, channel-major), b"labels", b"filenames", b"batch_label";
# batches.meta: b"label_names". CIFAR-100: cifar-100-python/{train, test, meta}, b"fine_labels",
# b"coarse_labels"; meta: b"fine_label_names", b"coarse_label_names".

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def cifar_batch(path: Path, labels: list[int], key: bytes = b"labels", extra: dict | None = None) -> None:
    import pickle

    n = len(labels)
    data = np.zeros((n, 3072), np.uint8)
    data[:, :1024] = np.array(labels, np.uint8)[:, None] * 20  # red channel encodes the class
    batch = {b"batch_label": b"batch", key: labels, b"data": data,
             b"filenames": [f"img_{i}.png".encode() for i in range(n)], **(extra or {})}
    path.write_bytes(pickle.dumps(batch, protocol=2))


def test_cifar10_python2_pickles_with_bytes_keys(tmp_path: Path, monkeypatch) -> None:
    import pickle

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    base = tmp_path / "cifar10" / "cifar-10-batches-py"
    base.mkdir(parents=True)
    for i in range(1, 6):
        cifar_batch(base / f"data_batch_{i}", [(i + k) % 10 for k in range(10)])
    cifar_batch(base / "test_batch", list(range(10))[::-1])
    (base / "batches.meta").write_bytes(pickle.dumps({b"label_names": [n.encode() for n in CIFAR10],
                                                      b"num_cases_per_batch": 10, b"num_vis": 3072}, protocol=2))
    data = load("cifar10", tmp_path / "cifar10")
    assert data.classnames == CIFAR10
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 50, "test": 10}
    path, label = data.splits["test"][0]
    assert label == 9 and np.asarray(Image.open(path))[0, 0, 0] == 180  # the pixels follow their label


# ------------------------------------------------------------------------------------------------
# DTD: dtd/images/<class>/<class>_NNNN.jpg and dtd/labels/{train,val,test}1.txt ("<class>/<file>").

DTD = ("banded blotchy braided bubbly bumpy chequered cobwebbed cracked crosshatched crystalline dotted "
       "fibrous flecked freckled frilly gauzy grid grooved honeycombed interlaced knitted lacelike lined "
       "marbled matted meshed paisley perforated pitted pleated polka-dotted porous potholed scaly smeared "
       "spiralled sprinkled stained stratified striped studded swirly veined waffled woven wrinkled "
       "zigzagged").split()


def test_dtd_archive_folder(tmp_path: Path) -> None:
    base = tmp_path / "dtd" / "dtd"  # the archive unpacks into dtd/
    for split, n in (("train", 1), ("val", 2), ("test", 3)):
        lines = []
        for c in DTD:
            jpg(base / "images" / c / f"{c}_{n:04d}.jpg")
            lines.append(f"{c}/{c}_{n:04d}.jpg")
        (base / "labels").mkdir(parents=True, exist_ok=True)
        (base / "labels" / f"{split}1.txt").write_text("\n".join(lines) + "\n")
    data = load("dtd", tmp_path / "dtd")
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 94, "val": 47, "test": 47}
    assert data.classnames[30] == "polka-dotted" and data.splits["test"][30][1] == 30


# ------------------------------------------------------------------------------------------------
# FGVC-Aircraft 2013b: fgvc-aircraft-2013b/data/images/<id>.jpg, data/variants.txt (100 lines),
# data/images_variant_{train,val,test}.txt ("<id> <variant>", variants may hold spaces and "/").

AIRCRAFT = ("707-320, 727-200, 737-200, 737-300, 737-400, 737-500, 737-600, 737-700, 737-800, 737-900, "
            "747-100, 747-200, 747-300, 747-400, 757-200, 757-300, 767-200, 767-300, 767-400, 777-200, "
            "777-300, A300B4, A310, A318, A319, A320, A321, A330-200, A330-300, A340-200, A340-300, "
            "A340-500, A340-600, A380, ATR-42, ATR-72, An-12, BAE 146-200, BAE 146-300, BAE-125, "
            "Beechcraft 1900, Boeing 717, C-130, C-47, CRJ-200, CRJ-700, CRJ-900, Cessna 172, Cessna 208, "
            "Cessna 525, Cessna 560, Challenger 600, DC-10, DC-3, DC-6, DC-8, DC-9-30, DH-82, DHC-1, DHC-6, "
            "DHC-8-100, DHC-8-300, DR-400, Dornier 328, E-170, E-190, E-195, EMB-120, ERJ 135, ERJ 145, "
            "Embraer Legacy 600, Eurofighter Typhoon, F-16A/B, F/A-18, Falcon 2000, Falcon 900, Fokker 100, "
            "Fokker 50, Fokker 70, Global Express, Gulfstream IV, Gulfstream V, Hawk T1, Il-76, L-1011, "
            "MD-11, MD-80, MD-87, MD-90, Metroliner, Model B200, PA-28, SR-20, Saab 2000, Saab 340, "
            "Spitfire, Tornado, Tu-134, Tu-154, Yak-42").split(", ")


def test_aircraft_variant_lists(tmp_path: Path) -> None:
    data_dir = tmp_path / "fgvc_aircraft" / "fgvc-aircraft-2013b" / "data"
    data_dir.mkdir(parents=True)
    (data_dir / "variants.txt").write_text("\n".join(AIRCRAFT) + "\n")
    for k, split in enumerate(("train", "val", "test")):
        lines = []
        for i, v in enumerate(AIRCRAFT):
            image_id = f"{1000000 + 1000 * k + i:07d}"
            jpg(data_dir / "images" / f"{image_id}.jpg")
            lines.append(f"{image_id} {v}")
        (data_dir / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")
    data = load("aircraft", tmp_path)  # the data root: found under CoOp's name, then the archive's
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 200, "val": 100, "test": 100}
    label = AIRCRAFT.index("F-16A/B")
    assert data.classnames[label] == "F-16A/B" and data.splits["test"][label][1] == label


# ------------------------------------------------------------------------------------------------
# Stanford Dogs: Images/<synset>-<breed>/<synset>_<n>.jpg; train_list.mat / test_list.mat hold
# file_list (N x 1 cell, "<synset>-<breed>/<file>.jpg"), annotation_list, labels (N x 1, 1..120).


def test_dogs_mat_lists(tmp_path: Path) -> None:
    root = tmp_path / "dogs"
    folders = [f"n{2085620 + c:08d}-Breed_{c}" for c in range(120)]
    for split, n in (("train", 1), ("test", 2)):
        files = [f"{f}/{f.split('-')[0]}_{n}.jpg" for f in folders]
        for f in files:
            jpg(root / "Images" / f)
        cells = np.empty((len(files), 1), dtype=object)
        cells[:, 0] = files
        savemat(root / f"{split}_list.mat", {"file_list": cells, "annotation_list": cells,
                                             "labels": np.arange(1, 121, dtype=np.float64)[:, None]})
    data = load("dogs", root)
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 120, "test": 120}
    assert data.classnames[7] == "Breed 7" and data.splits["test"][7][1] == 7


# ------------------------------------------------------------------------------------------------
# ImageNet (ILSVRC-2012): train/<wnid>/*.JPEG; val/ flat with the devkit's
# ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt (line k: the ILSVRC2012_ID of
# ILSVRC2012_val_000k.JPEG) and meta.mat `synsets` (1860 structs: the 1000 leaves with ids 1..1000,
# not in WordNet-id order, then the non-leaf synsets with num_children > 0).


def test_imagenet_devkit_with_non_leaf_synsets(tmp_path: Path) -> None:
    from timm.data import ImageNetInfo  # the 1000 WordNet ids from timm, not from lore

    info = ImageNetInfo()
    wnids = [info.index_to_label_name(i) for i in range(1000)]
    root = tmp_path / "imagenet"
    for w in wnids:
        jpg(root / "train" / w / f"{w}_1.JPEG")
    order = np.random.default_rng(0).permutation(1000)  # devkit id k + 1 is wnids[order[k]]
    rows = [{"ILSVRC2012_ID": k + 1, "WNID": wnids[order[k]], "words": "x", "gloss": "x", "num_children": 0,
             "children": np.zeros((1, 0)), "wordnet_height": 0, "num_train_images": 1300} for k in range(1000)]
    rows += [{"ILSVRC2012_ID": 1001 + j, "WNID": f"n9999999{j}", "words": "group", "gloss": "x",
              "num_children": 2, "children": np.array([[1, 2]]), "wordnet_height": 1, "num_train_images": 0}
             for j in range(2)]
    devkit = root / "ILSVRC2012_devkit_t12" / "data"
    devkit.mkdir(parents=True)
    savemat(devkit / "meta.mat", {"synsets": struct_array(rows).T})
    truth = [(7 * k) % 1000 + 1 for k in range(1000)]  # val image k+1 shows devkit class truth[k]
    (devkit / "ILSVRC2012_validation_ground_truth.txt").write_text("\n".join(map(str, truth)) + "\n")
    for k in range(1000):
        jpg(root / "val" / f"ILSVRC2012_val_{k + 1:08d}.JPEG")
    data = load("imagenet", root)
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 1000, "test": 1000}
    sorted_index = {w: i for i, w in enumerate(sorted(wnids))}
    for k in (0, 1, 500, 999):
        path, label = data.splits["test"][k]
        assert Path(path).name == f"ILSVRC2012_val_{k + 1:08d}.JPEG"
        assert label == sorted_index[wnids[order[truth[k] - 1]]]


def test_cifar100_fine_labels(tmp_path: Path, monkeypatch) -> None:
    import pickle

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    base = tmp_path / "cifar-100-python"  # the archive's folder name, straight under a data root
    base.mkdir()
    names = [f"fine_{i}" for i in range(100)]
    cifar_batch(base / "train", [i % 100 for i in range(200)], key=b"fine_labels", extra={b"coarse_labels": [0] * 200})
    cifar_batch(base / "test", list(range(100)), key=b"fine_labels", extra={b"coarse_labels": [0] * 100})
    (base / "meta").write_bytes(pickle.dumps({b"fine_label_names": [n.encode() for n in names],
                                              b"coarse_label_names": [b"c"] * 20}, protocol=2))
    data = load("cifar100", tmp_path)
    assert data.classnames[42] == "fine 42" and data.splits["test"][42][1] == 42
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 200, "test": 100}


# PatternNet: PatternNet/images/<class>/<class without underscores>NNN.jpg (38 classes, 800 each).
PATTERNNET = ["airplane", "baseball_field", "basketball_court", "beach", "bridge", "cemetery", "chaparral",
              "christmas_tree_farm", "closed_road", "coastal_mansion", "crosswalk", "dense_residential",
              "ferry_terminal", "football_field", "forest", "freeway", "golf_course", "harbor", "intersection",
              "mobile_home_park", "nursing_home", "oil_gas_field", "oil_well", "overpass", "parking_lot",
              "parking_space", "railway", "river", "runway", "runway_marking", "shipping_yard", "solar_panel",
              "sparse_residential", "storage_tank", "swimming_pool", "tennis_court", "transformer_station",
              "wastewater_treatment_plant"]


def test_patternnet_images_folder(tmp_path: Path) -> None:
    for c in PATTERNNET:
        for n in range(1, 21):
            jpg(tmp_path / "PatternNet" / "images" / c / f"{c.replace('_', '')}{n:03d}.jpg")
    data = load("patternnet", tmp_path)
    pool, test = data.splits["train"], data.splits["test"]
    assert len(pool) + len(test) == 38 * 20 and len(pool) > len(test)  # 640 of every 800 train
    assert all(Path(p).parent.name == PATTERNNET[y] for p, y in pool + test)


# UCF101 (CoOp's middle frames): UCF-101-midframes/<Class>/v_<Class>_gGG_cCC.jpg + split_zhou_UCF101.json.
def test_ucf101_midframes_with_coops_split(tmp_path: Path) -> None:
    root = tmp_path / "ucf101"
    classes = [f"Action_{i}" for i in range(101)]
    split = {}
    for s, g in (("train", 1), ("val", 2), ("test", 3)):
        split[s] = [[f"{c}/v_{c.replace('_', '')}_g{g:02d}_c01.jpg", i, c] for i, c in enumerate(classes)]
        for rel, _, _ in split[s]:
            jpg(root / "UCF-101-midframes" / rel)
    (root / "split_zhou_UCF101.json").write_text(json.dumps(split))
    data = load("ucf101", root)
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 202, "val": 101, "test": 101}
    assert data.classnames[5] == "Action 5"
