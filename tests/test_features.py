"""Frozen-feature methods on backbone features computed once: exactly what recomputing gives for a
deterministic transform; shared test features are keyed on weights, images and transform."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_BACKBONE, TINY_CLIP_BACKBONE, lore_cli, tiny_clip_spec


def _train(tmp_path: Path, name: str, args: list) -> tuple[dict, dict]:
    out = tmp_path / name
    assert lore_cli("train", *args, "--out", out) == 0
    return load_file(str(out / "checkpoint.safetensors")), json.loads((out / "final.json").read_text())


def _recomputed(monkeypatch) -> None:
    """Today's path: every epoch's images through the backbone again."""
    from lore import features
    monkeypatch.setattr(features, "uses_features", lambda model: False)


CASES = {
    "linear": lambda c, t: ["--method", "linear", *TINY_BACKBONE],
    "tip-adapter-f": lambda c, t: ["--method", "tip-adapter-f", *TINY_CLIP_BACKBONE,
                                   "--knowledge", tiny_clip_spec(t), "--lr", "0.001"],
    "clip-adapter": lambda c, t: ["--method", "clip-adapter", *TINY_CLIP_BACKBONE,
                                  "--knowledge", tiny_clip_spec(t)],
}


@pytest.mark.parametrize("aug", ["flip", "none"])
@pytest.mark.parametrize("method", sorted(CASES))
def test_cached_features_train_exactly_like_recomputed(method, aug, colors, tmp_path, monkeypatch, capsys):
    args = ["--lr", "0.5", *CASES[method](colors, tmp_path), "--data", colors, "--epochs", "3",
            "--batch-size", "16", "--aug", aug, "--shots", "8", "--workers", "0"]
    cached_w, cached = _train(tmp_path, "cached", args)
    assert "training on cached backbone features" in capsys.readouterr().err
    with monkeypatch.context() as m:
        _recomputed(m)
        ref_w, ref = _train(tmp_path, "ref", args)
    assert cached_w.keys() == ref_w.keys()
    changed = [k for k in ref_w if not torch.equal(cached_w[k], ref_w[k])]
    assert not changed, changed
    assert cached["test_acc1"] == ref["test_acc1"] and cached["test_acc5"] == ref["test_acc5"]
    metrics = [(tmp_path / r / "metrics.jsonl").read_text().splitlines() for r in ("cached", "ref")]
    strip = [[{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in m] for m in metrics]
    assert strip[0] == strip[1]


def test_shared_test_features_are_reused_only_for_the_same_weights_images_and_transform(
        colors, tmp_path, monkeypatch, capsys):
    import shutil

    from lore import features
    data = tmp_path / "data"
    shutil.copytree(colors, data)
    cache = tmp_path / "grid" / "cache" / "features"
    calls = []
    real = features.compute
    monkeypatch.setattr(features, "compute", lambda ctx, model, samples, *a, **k: (
        calls.append(len(samples)), real(ctx, model, samples, *a, **k))[1])
    base = ["--method", "linear", *TINY_BACKBONE, "--data", data, "--epochs", "1", "--batch-size", "16",
            "--aug", "none", "--feature-cache", cache]

    def run(name: str, *extra) -> tuple[list[int], dict]:
        calls.clear()
        _, final = _train(tmp_path, name, [*base, *extra])
        return list(calls), final

    first, a = run("a")
    assert first == [48, 24] and len(list(cache.glob("*.safetensors"))) == 1  # training views, then test
    again, b = run("b", "--lr", "0.01")  # another cell of the grid: the test features are read back
    assert again == [48] and len(list(cache.glob("*.safetensors"))) == 1
    _, same = run("a2")
    assert same["test_acc1"] == a["test_acc1"]
    assert not list((tmp_path / "a").rglob("*features*"))  # never in a run folder
    assert run("other-weights", "--seed", "7")[0] == [48, 24]  # another random init: not reused
    assert run("other-transform", "--crop-pct", "0.5")[0] == [48, 24]
    image = next((data / "test").rglob("*.png"))
    image.write_bytes(image.read_bytes())  # the same bytes, a new modification time: not trusted
    import os
    os.utime(image, ns=(1, 1))
    assert run("other-images")[0] == [48, 24]
    assert len(list(cache.glob("*.safetensors"))) == 4


def test_random_crops_train_on_k_cached_views(colors, tmp_path, capsys):
    args = ["--method", "linear", *TINY_BACKBONE, "--data", colors, "--epochs", "2", "--batch-size", "16",
            "--feature-views", "3"]
    w1, f1 = _train(tmp_path, "k3", args)
    assert "3 view(s) per image, --aug rrc-flip" in capsys.readouterr().err
    w2, f2 = _train(tmp_path, "k3-again", args)  # the views are fixed by the seed
    assert all(torch.equal(w1[k], w2[k]) for k in w1) and f1["test_acc1"] == f2["test_acc1"]
    capsys.readouterr()
    _train(tmp_path, "fresh", [*args, "--feature-views", "0"])
    assert "cached backbone features" not in capsys.readouterr().err


def test_linear_probe_grid_as_many_heads_equals_the_separate_runs(colors, tmp_path):
    """The lr x wd grid trained as heads side by side on one pass of cached features: each head is
    bit for bit the head of its own `lore train --method linear` run."""
    from lore import config as config_mod
    from lore import features
    from lore.distributed import DistInfo
    from lore.head_grid import train_heads
    from lore.runs import run_data_config
    from lore.train import Context, build_from_config, load_data

    pairs = [(0.5, 0.0), (0.5, 0.1), (0.05, 0.0), (0.05, 0.1)]
    common = ["--method", "linear", *TINY_BACKBONE, "--data", colors, "--epochs", "3", "--batch-size", "16",
              "--aug", "flip"]
    runs = [_train(tmp_path, f"lr{lr}-wd{wd}", [*common, "--lr", lr, "--wd", wd])[0] for lr, wd in pairs]
    cfg = config_mod.make(config_mod.load_yaml(str(tmp_path / "lr0.5-wd0.0" / "config.yaml")))
    data = load_data(cfg)
    model = build_from_config(cfg, len(data.classnames))
    ctx = Context(cfg, DistInfo(), torch.device("cpu"), tmp_path)
    ctx.data_config = run_data_config(cfg, model.black_box)
    dataset = features.training_dataset(ctx, model, data.get("train"))
    heads = train_heads(ctx, model, dataset, pairs)
    for head, run in zip(heads, runs):
        assert torch.equal(head.weight.detach(), run["head.weight"])
        assert torch.equal(head.bias.detach(), run["head.bias"])
    assert not torch.equal(heads[0].weight, heads[1].weight)  # the cells differ
