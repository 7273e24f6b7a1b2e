"""Issue 6: `lore bench` writes every figure, and its ratios follow from the raw figures."""

from __future__ import annotations

import json

import pytest

from conftest import TINY, lore_cli


def test_bench_json_fields_and_ratios(tmp_path, capsys):
    assert lore_cli("bench", "--backbone", "vit_small_patch16_224", "--backbone-args", TINY, "--img-size", "32",
                    "--batch", "4", "--methods", "b-b,vpt-deep,lore", "--repeats", "2", "--warmup", "1",
                    "--device", "cpu", "--out", tmp_path) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    methods = report["methods"]
    assert list(methods) == ["b-b", "vpt-deep", "lore"]
    for m in methods.values():
        assert set(m) == {"infer_images_per_s", "train_images_per_s", "peak_mem_mb", "gflops", "trainable_params"}
        assert all(v > 0 for v in m.values())
    assert methods["b-b"]["trainable_params"] < methods["vpt-deep"]["trainable_params"] < methods["lore"]["trainable_params"]
    assert methods["b-b"]["gflops"] < methods["vpt-deep"]["gflops"] < methods["lore"]["gflops"]
    for name, ref in (("lore/b-b", "b-b"), ("lore/vpt-deep", "vpt-deep"), ("vpt-deep/b-b", "b-b")):
        m, r = methods[name.split("/")[0]], methods[ref]
        ratio = report["ratios"][name]
        assert ratio["infer_throughput"] == pytest.approx(m["infer_images_per_s"] / r["infer_images_per_s"], rel=1e-3)
        assert ratio["train_step_time"] == pytest.approx(r["train_images_per_s"] / m["train_images_per_s"], rel=1e-3)
        assert ratio["gflops"] == pytest.approx(m["gflops"] / r["gflops"], rel=1e-3)
        assert ratio["peak_mem"] == pytest.approx(m["peak_mem_mb"] / r["peak_mem_mb"], rel=1e-3)
    assert report["config"]["batch"] == 4 and report["config"]["img_size"] == 32
    out = capsys.readouterr().out
    assert "lore/vpt-deep" in out and "infer img/s" in out


def test_bench_rejects_unknown_method(capsys):
    assert lore_cli("bench", "--backbone", "vit_small_patch16_224", "--backbone-args", TINY, "--img-size", "32",
                    "--methods", "b-b,warp-drive") == 2
    assert "warp-drive" in capsys.readouterr().err
