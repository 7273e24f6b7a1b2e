"""The input pipeline: decoded training images kept in memory, one loader whose workers persist
across epochs; results bit-identical to decoding every epoch in fresh loaders, resume included."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_BACKBONE, lore_cli


def _result(run: Path) -> tuple[dict, list]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return load_file(str(run / "checkpoint.safetensors")), [{k: v for k, v in x.items() if k != "seconds"}
                                                            for x in lines]


def test_image_cache_and_persistent_workers_resume_like_the_uninterrupted_run(colors, tmp_path, monkeypatch):
    from lore.data import image_cache
    from lore.train import loop

    common = ["train", "--method", "vpt-deep", *TINY_BACKBONE, "--data", colors, "--epochs", "3",
              "--batch-size", "16", "--save-every", "2", "--deterministic"]
    plain = tmp_path / "plain"  # today's pipeline: decode every epoch, no worker processes
    assert lore_cli(*common, "--out", plain, "--cache-images", "off", "--workers", "0") == 0
    decoded = []
    real_init = image_cache.CachedImageDataset.__init__
    monkeypatch.setattr(image_cache.CachedImageDataset, "__init__",
                        lambda self, *a: (decoded.append(1), real_init(self, *a))[1])
    fast = ["--cache-images", "on", "--workers", "2"]
    ref = tmp_path / "ref"
    assert lore_cli(*common, "--out", ref, *fast) == 0
    assert decoded == [1]

    real, calls = loop._Step.forward, {"n": 0}

    def dies_at_step_5(self, *args):
        calls["n"] += 1
        if calls["n"] == 5:  # epoch 2, after the mid-epoch checkpoint of global step 4
            raise RuntimeError("killed")
        return real(self, *args)

    run = tmp_path / "killed"
    with monkeypatch.context() as m:
        m.setattr(loop._Step, "forward", dies_at_step_5)
        with pytest.raises(RuntimeError, match="killed"):
            lore_cli(*common, "--out", run, *fast)
    assert (run / "checkpoints" / "main-step-00000004.safetensors").exists()
    assert lore_cli("train", "--resume", run, *fast) == 0
    (w_plain, m_plain), (w_ref, m_ref), (w_run, m_run) = _result(plain), _result(ref), _result(run)
    for k in w_plain:
        assert torch.equal(w_plain[k], w_ref[k]) and torch.equal(w_ref[k], w_run[k]), k
    assert m_plain == m_ref == m_run


def test_auto_caches_only_what_fits_the_memory_budget(colors, monkeypatch):
    from lore.data import image_cache

    samples = [(str(p), 0) for p in sorted((colors / "train").rglob("*.png"))]
    size = image_cache.decoded_bytes(samples)
    assert size == len(samples) * 32 * 32 * 3  # the generated images are 32 x 32 RGB
    monkeypatch.setattr(image_cache, "available_memory", lambda: int(size / image_cache.AUTO_SHARE))
    assert image_cache.should_cache("auto", samples)
    monkeypatch.setattr(image_cache, "available_memory", lambda: int(size / image_cache.AUTO_SHARE) - 1)
    assert not image_cache.should_cache("auto", samples)
    assert image_cache.should_cache("on", samples) and not image_cache.should_cache("off", samples)
    dataset = image_cache.training_dataset(samples, None, "on")
    assert isinstance(dataset, image_cache.CachedImageDataset) and dataset[3][0].size == (32, 32)


def test_a_folder_is_listed_once_until_it_changes(colors, tmp_path, monkeypatch):
    import os
    import shutil

    from lore.data import file_index, layout, load_dataset

    root = tmp_path / "data"
    shutil.copytree(colors, root)
    for d, _, _ in os.walk(root):  # folders changed long ago (a just-changed one is always listed)
        os.utime(d, ns=(1, 10**18))
    scans = []
    real = file_index.listing
    monkeypatch.setattr(file_index, "listing", lambda folder, rec, scan: real(
        folder, rec, lambda f: (scans.append(f.name), scan(f))[1]))
    first = load_dataset(str(root), "imagefolder")
    n_folders = len(scans)
    assert n_folders == 8  # 4 classes x train / test
    again = load_dataset(str(root), "imagefolder")  # another cell of a grid: nothing listed again
    assert len(scans) == n_folders and again.splits == first.splits
    red = root / "train" / "red"
    (red / "deeper").mkdir()
    shutil.copy(next(red.glob("*.png")), red / "deeper" / "new.png")
    changed = load_dataset(str(root), "imagefolder")
    assert scans[n_folders:] == ["red"]  # only the changed class folder
    assert len(changed.get("train")) == len(first.get("train")) + 1
    os.remove(red / "deeper" / "new.png")  # a change below a known subfolder is seen too
    assert len(load_dataset(str(root), "imagefolder").get("train")) == len(first.get("train"))
    flat = root / "flat"
    flat.mkdir()
    shutil.copy(next(red.glob("*.png")), flat / "a.png")
    os.utime(flat, ns=(1, 10**18))
    assert [p.name for p in layout.list_images(flat)] == ["a.png"]
    n = len(scans)
    assert [p.name for p in layout.list_images(flat)] == ["a.png"] and len(scans) == n  # kept
    shutil.copy(flat / "a.png", flat / "b.png")
    assert [p.name for p in layout.list_images(flat)] == ["a.png", "b.png"]
