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
