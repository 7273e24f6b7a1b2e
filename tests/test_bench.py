"""Issue 6: `lore bench` writes every figure, and its ratios follow from the raw figures."""

from __future__ import annotations

import json

import pytest

from conftest import TINY, TINY_32, lore_cli


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


def test_bench_times_the_clip_prompt_learners_beside_lore(tmp_path):
    clip = tmp_path / "lore-tiny-bench.json"
    clip.write_text(json.dumps({"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32,
                                                                  "head_width": 16, "patch_size": 8},
                                "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32,
                                             "heads": 2, "layers": 2}}))
    methods = ["lore", "coop", "cocoop", "prograd", "maple"]
    assert lore_cli("bench", "--backbone", "vit_base_patch16_clip_quickgelu_224.openai", "--backbone-args",
                    TINY_32,
                    "--knowledge", f"clip:{clip}/none", "--img-size", "32", "--batch", "2", "--num-classes", "3",
                    "--methods", ",".join(methods), "--repeats", "1", "--warmup", "0", "--device", "cpu",
                    "--out", tmp_path) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    res = report["methods"]
    assert list(res) == methods
    # trainable: CoOp 16 x 32 context; Co-CoOp 4 x 32 + meta-net 32 -> 2 -> 32; MaPLe J = 2 on 2-layer towers
    assert [res[m]["trainable_params"] for m in ("coop", "cocoop", "prograd", "maple")] == \
        [16 * 32, 4 * 32 + 66 + 96, 16 * 32, 2 * (32 * 64 + 64) + 2 * 2 * 32]
    for m in methods[1:]:
        ratio = report["ratios"][f"{m}/lore"]
        expected = res["lore"]["train_images_per_s"] / res[m]["train_images_per_s"]
        assert ratio["train_step_time"] == pytest.approx(expected, rel=1e-3, abs=1e-4)  # rounded to 4 places
    assert "cocoop/coop" in report["ratios"] and "maple/coop" in report["ratios"]


def test_bench_pipeline_reports_loader_and_model_side_by_side(colors, tmp_path, capsys):
    """A tiny setting only: the figures exist and are consistent, no speed is asserted."""
    assert lore_cli("bench", "--pipeline", colors / "train", "--pipeline-workers", "0,1", "--pipeline-images", "20",
                    "--pipeline-passes", "1", "--backbone", "vit_small_patch16_224", "--backbone-args", TINY,
                    "--img-size", "32", "--batch", "4", "--methods", "b-b,lore-no-kp", "--repeats", "1",
                    "--warmup", "0", "--device", "cpu", "--out", tmp_path) == 0
    report = json.loads((tmp_path / "pipeline.json").read_text())
    assert report["pipeline"]["images"] == 20 and report["workers"] == [0, 1]
    assert set(report["pipeline"]["loader_images_per_s"]) == {"decode/0", "cached/0", "decode/1", "cached/1"}
    assert all(v > 0 for v in report["pipeline"]["loader_images_per_s"].values())
    fastest = max(report["model"], key=lambda m: report["model"][m]["train_images_per_s"])
    assert report["method"] == fastest and report["model_train_images_per_s"] > 0
    out = capsys.readouterr().out
    assert "who waits" in out and "decoded once" in out
    assert lore_cli("bench", "--pipeline", tmp_path / "none", "--device", "cpu") == 2
