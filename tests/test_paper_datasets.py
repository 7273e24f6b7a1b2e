"""Issue 12 (part 1): the paper's 12 datasets read as they are distributed.

Each dataset is written as a tiny copy in its real on-disk format; every image is a flat colour
of its class (plus noise), so reading an image's mean colour tells which class the file really
holds and a loader that mislabels files fails.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_BACKBONE, lore_cli
from lore.data import catalog
from lore.errors import LoreError
from lore.synthetic.paper_datasets import write_paper_datasets

PER_CLASS, TEST_PER_CLASS = 3, 1
WITH_VAL = {"dtd", "aircraft", "flowers", "cars", "eurosat", "ucf101"}


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    # CIFAR images are materialised under the user cache: keep it inside the test's folders
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def fake_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("paper_data")
    write_paper_datasets(root, per_class=PER_CLASS, test_per_class=TEST_PER_CLASS)
    return root


def _class_of(path: str, colours: np.ndarray) -> int:
    mean = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32).mean(axis=(0, 1))
    return int(np.argmin(np.abs(colours - mean).sum(axis=1)))


def _colours(num_classes: int) -> np.ndarray:
    return np.random.default_rng(num_classes).integers(20, 236, (num_classes, 3)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# facts


def test_catalog_facts_match_table6_and_the_reference_templates():
    assert catalog.PAPER_DATASETS == ("cifar10", "cifar100", "imagenet", "dtd", "aircraft", "dogs",
                                      "flowers", "cars", "eurosat", "ucf101", "resisc45", "patternnet")
    table6 = {"flowers": (102, 5726, 2463), "cars": (196, 8144, 8041), "aircraft": (100, 6667, 3333),
              "dogs": (120, 12000, 8580), "cifar10": (10, 50000, 10000), "cifar100": (100, 50000, 10000),
              "dtd": (47, 3760, 1880), "imagenet": (1000, 1281166, 50000), "eurosat": (10, 18900, 8100),
              "resisc45": (45, 6300, 25200), "patternnet": (38, 24320, 6080), "ucf101": (101, 9537, 3783)}
    for name, (classes, train, test) in table6.items():
        info = catalog.info(name)
        assert (info["classes"], info["paper_table6"]["train"], info["paper_table6"]["test"]) == (classes, train, test)
        assert len(catalog.classnames(name)) == len(catalog.class_keys(name)) == classes
        expected = catalog.expected_sizes(name)
        # the pool is the official / CoOp train and val parts together
        if "official_split" in info:
            split = info["official_split"]
            assert split["train"] + split["val"] == expected["train"] and split["val"] == expected["val"]
            assert split["test"] == expected["test"]
        if name != "imagenet":  # the paper prints 1,281,166; the distributed train set has 1,281,167
            assert (expected["train"], expected["test"]) == (train, test)
    assert catalog.expected_sizes("imagenet")["train"] == 1281167
    # the reference code's sentences (its prompt learners), type suffixes included
    knowledge = {"This is a photo of a {}.": ["cifar10", "cifar100", "cars", "dtd", "imagenet"],
                 "This is a photo of a {}, a type of dog.": ["dogs"],
                 "a photo of a {}, a type of aircraft.": ["aircraft"],
                 "a photo of a {}, a type of flower.": ["flowers"],
                 "a centered satellite photo of {}.": ["eurosat"],
                 "aerial imagery of a {}.": ["resisc45", "patternnet"],
                 "a photo of a person doing {}.": ["ucf101"]}
    for template, names in knowledge.items():
        assert all(catalog.knowledge_template(n) == template for n in names)
    assert catalog.zeroshot_templates("flowers") == ["a photo of a {}, a type of flower."]
    assert catalog.zeroshot_templates("dtd") == ["{} texture."]
    assert all("{}" in t for n in catalog.PAPER_DATASETS for t in catalog.zeroshot_templates(n))


def test_readable_class_names_ship_for_all_datasets():
    names = catalog.classnames("imagenet")
    assert names[0] == "tench" and names[1] == "goldfish" and catalog.class_keys("imagenet")[0] == "n01440764"
    assert catalog.classnames("cifar100")[1] == "aquarium fish"
    assert catalog.classnames("dogs")[0] == "Chihuahua" and catalog.class_keys("dogs")[0] == "n02085620-Chihuahua"
    assert catalog.classnames("eurosat")[0] == "Annual Crop Land"
    assert catalog.classnames("resisc45")[2] == "baseball diamond"
    assert all("_" not in n for name in catalog.PAPER_DATASETS for n in catalog.classnames(name))


def test_shipped_remote_sensing_splits_have_the_papers_per_class_counts():
    for name, per_class, train in (("resisc45", 700, 140), ("patternnet", 800, 640)):
        split = catalog.split_list(name)
        assert split["images_per_class"] == per_class and set(split["train"]) == set(catalog.class_keys(name))
        for numbers in split["train"].values():
            assert len(numbers) == len(set(numbers)) == train and 1 <= min(numbers) <= max(numbers) <= per_class
        total_train = train * catalog.info(name)["classes"]
        assert total_train == catalog.expected_sizes(name)["train"]
        assert (per_class - train) * catalog.info(name)["classes"] == catalog.expected_sizes(name)["test"]


def test_dataset_dir_and_missing(tmp_path):
    assert catalog.dataset_dir("dtd", tmp_path) == tmp_path / "dtd"
    assert catalog.missing("dtd", tmp_path) == f"{tmp_path / 'dtd'} not found"
    (tmp_path / "dtd").mkdir()
    assert catalog.missing("dtd", tmp_path) is None
    with pytest.raises(LoreError, match="unknown dataset 'svhn'"):
        catalog.dataset_dir("svhn", tmp_path)


# ---------------------------------------------------------------------------------------------
# the readers on tiny copies in the real formats


@pytest.mark.parametrize("name", catalog.PAPER_DATASETS)
def test_reader_splits_labels_and_class_names(fake_root, name):
    data = catalog.load_paper_dataset(name, catalog.dataset_dir(name, fake_root))
    n = catalog.info(name)["classes"]
    assert data.classnames == catalog.classnames(name)
    sizes = {s: len(v) for s, v in data.splits.items()}
    val = n if name in WITH_VAL else 0
    assert sizes["train"] == PER_CLASS * n and sizes["test"] == TEST_PER_CLASS * n
    assert sizes.get("val", 0) == val
    if val:  # the pool holds the val part
        assert set(data.splits["val"]) <= set(data.splits["train"])
    for split, samples in data.splits.items():
        labels = np.array([y for _, y in samples])
        assert np.bincount(labels, minlength=n).tolist() == [len(samples) // n] * n, split
    # every file holds an image of the class it is labelled with
    colours = _colours(n)
    picks = {s: v[:: max(1, len(v) // 25)] for s, v in data.splits.items()}
    for split, samples in picks.items():
        assert [_class_of(p, colours) for p, _ in samples] == [y for _, y in samples], split


@pytest.mark.parametrize("val_format", ["folders", "loc", "devkit"])
def test_imagenet_val_layouts_agree(tmp_path, val_format):
    from lore.synthetic.paper_datasets import _imagenet
    _imagenet(tmp_path / "imagenet", 1, 1, 16, np.random.default_rng(3), val_format=val_format)
    data = catalog.load_paper_dataset("imagenet", tmp_path / "imagenet")
    test = data.splits["test"]
    assert len(test) == 1000 and sorted(y for _, y in test) == list(range(1000))
    colours = _colours(1000)
    assert all(_class_of(p, colours) == y for p, y in test[::97])


def test_imagenet_flat_val_without_ground_truth_names_the_expected_files(tmp_path):
    from lore.synthetic.paper_datasets import _imagenet
    _imagenet(tmp_path, 1, 1, 16, np.random.default_rng(0), val_format="none")
    with pytest.raises(LoreError, match="LOC_val_solution.csv or ILSVRC2012_devkit_t12/data/"):
        catalog.load_paper_dataset("imagenet", tmp_path)


def test_cifar_images_are_cached_once_and_reused(fake_root, tmp_path_factory):
    a = catalog.load_paper_dataset("cifar10", fake_root / "cifar10")
    first = Path(a.splits["train"][0][0])
    stamp = first.stat().st_mtime_ns
    b = catalog.load_paper_dataset("cifar10", fake_root / "cifar10")
    assert a.splits == b.splits and first.stat().st_mtime_ns == stamp
    assert str(tmp_path_factory.getbasetemp() / "cache" / "lore" / "cifar10") in str(first)


def test_cifar_pickle_with_code_is_refused(tmp_path):
    import os

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (base / name).write_bytes(b"")
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": Evil()}, f, protocol=2)
    with pytest.raises(LoreError, match="refused"):
        catalog.load_paper_dataset("cifar10", tmp_path)
    assert not (tmp_path / "pwned").exists()


# ---------------------------------------------------------------------------------------------
# folders that do not match their format: one error naming the expected file


@pytest.mark.parametrize("name, remove, expected", [
    ("dtd", "dtd/labels/test1.txt", "expected labels/test1.txt"),
    ("aircraft", "fgvc-aircraft-2013b/data/variants.txt", "expected variants.txt"),
    ("dogs", "train_list.mat", "expected train_list.mat"),
    # without CoOp's split file the official one is read: its files are then what is missing
    ("flowers", "split_zhou_OxfordFlowers.json", "expected imagelabels.mat"),
    ("eurosat", "2750", r"expected the class folders \(AnnualCrop/, ...\) in .*/2750 or .*/EuroSAT_RGB"),
    ("cifar100", "cifar-100-python/test", "expected test"),
    ("imagenet", "train", "expected the train/ folder"),
    ("resisc45", "NWPU-RESISC45", "expected class folders such as airplane/"),
])
def test_wrong_layout_names_the_expected_file(fake_root, tmp_path, name, remove, expected):
    copy = tmp_path / name
    shutil.copytree(catalog.dataset_dir(name, fake_root), copy)
    target = copy / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(LoreError, match=expected) as e:
        catalog.load_paper_dataset(name, copy)
    assert str(copy) in str(e.value) and "\n" not in str(e.value)


def test_missing_listed_image_is_named(fake_root, tmp_path):
    copy = tmp_path / "aircraft"
    shutil.copytree(fake_root / "aircraft", copy)
    victim = sorted((copy / "fgvc-aircraft-2013b/data/images").iterdir())[0]
    victim.unlink()
    with pytest.raises(LoreError, match=f"missing, e.g. .*{victim.name}"):
        catalog.load_paper_dataset("aircraft", copy)


# ---------------------------------------------------------------------------------------------
# lore data check / lore train --dataset


def test_data_check_prints_sizes_and_exits_by_match(fake_root, capsys, monkeypatch):
    assert lore_cli("data", "check", "eurosat", "--root", fake_root / "eurosat") == 2
    out, err = capsys.readouterr()
    assert "found" in out and "expected" in out and "18900" in out
    assert err.strip().count("\n") == 0 and "eurosat" in err and "train has 30 images, expected 18900" in err
    # the same folder checks out against sizes that match it
    table = json.loads((catalog.META / "datasets.json").read_text())
    table["eurosat"]["expected"] = {"train": 30, "val": 10, "test": 10}
    monkeypatch.setattr(catalog, "_table", lambda: table)
    assert lore_cli("data", "check", "eurosat", "--root", fake_root / "eurosat") == 0
    assert "ok" in capsys.readouterr().out
    assert lore_cli("data", "check", "svhn", "--root", fake_root) == 2


def test_knowledge_templates_follow_the_dataset(monkeypatch):
    from types import SimpleNamespace

    import lore.train as train_mod
    from lore.config import TrainConfig
    seen = []
    monkeypatch.setattr(train_mod, "_rank0_cached", lambda ctx, name, spec, names, templates: seen.append(templates))
    for method, template in (("lore", None), ("zeroshot", None), ("zeroshot", "a {}."), ("lore", "the {}.")):
        cfg = TrainConfig(method=method, dataset="dtd", knowledge="ngram:8", template=template)
        train_mod._knowledge(SimpleNamespace(cfg=cfg), ["banded"])
    assert seen == [["This is a photo of a {}."], ["{} texture."], ["a {}."], ["the {}."]]


def test_train_with_dataset_reads_it_as_distributed(fake_root, tmp_path, monkeypatch):
    import lore.train as train_mod
    seen = {}
    original = train_mod.cached_class_embeddings

    def spy(cache, spec, classnames, templates, device="cpu"):
        seen.update(classnames=classnames, templates=templates)
        return original(cache, spec, classnames, templates, device)

    monkeypatch.setattr(train_mod, "cached_class_embeddings", spy)
    out = tmp_path / "run"
    assert lore_cli("train", "--method", "lore", "--dataset", "eurosat", "--data", fake_root / "eurosat",
                    "--knowledge", "ngram:32", "--shots", "1", "--epochs", "1", "--batch-size", "5",
                    "--out", out, *TINY_BACKBONE) == 0
    final = json.loads((out / "final.json").read_text())
    assert final["num_classes"] == 10 and final["test_samples"] == 10
    assert seen["templates"] == ["a centered satellite photo of {}."]
    assert seen["classnames"] == catalog.classnames("eurosat")
    assert lore_cli("eval", "--run", out) == 0


def test_list_files_may_not_lead_outside_the_dataset(fake_root, tmp_path):
    copy = tmp_path / "dtd"
    shutil.copytree(fake_root / "dtd", copy)
    listing = copy / "dtd" / "labels" / "train1.txt"
    listing.write_text("banded/../../../../etc/passwd\n" + listing.read_text())
    with pytest.raises(LoreError, match="train1.txt, line 1: .* leads outside"):
        catalog.load_paper_dataset("dtd", copy)


def test_class_names_come_with_the_split_file(fake_root, tmp_path):
    copy = tmp_path / "eurosat"
    shutil.copytree(fake_root / "eurosat", copy)
    split_file = copy / "split_zhou_EuroSAT.json"
    split = json.loads(split_file.read_text())
    for items in split.values():
        for item in items:
            item[2] = "Forest_Land" if item[1] == 1 else item[2]
    split_file.write_text(json.dumps(split))
    names = catalog.load_paper_dataset("eurosat", copy).classnames
    assert names[1] == "Forest Land" and names[0] == catalog.classnames("eurosat")[0]
