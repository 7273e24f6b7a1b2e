"""lore.export: the ONNX graph gives PyTorch's logits (prompts and CoOp's text features in it)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_CLIP_BACKBONE as CLIP, lore_cli, train_tiny as train


def onnx_logits(path: Path, x: torch.Tensor) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})[0]


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(1.0, np.abs(b).max()))


@pytest.mark.parametrize("method", ["lore", "vpt-deep"])
def test_export_matches_pytorch_and_keeps_the_prompts(method: str, lore_run: Path, colors: Path,
                                                      tmp_path: Path) -> None:
    from lore.checkpoint import load_run
    from lore.models import build_model

    run = lore_run if method == "lore" else train(tmp_path / "vpt", colors, "--method", "vpt-deep")
    out = tmp_path / "onnx" / "model.onnx"
    assert lore_cli("export", "--run", run, "--out", out) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["classnames"] == ["blue", "green", "red", "yellow"] and meta["input"]["shape"][1:] == [3, 32, 32]
    assert meta["preprocessing"]["center_crop"] == 32 and meta["preprocessing"]["resize_shorter_side"] == 35
    model, _ = load_run(run)
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(7))  # another batch size
    with torch.no_grad():
        ref = model(x).numpy()
        bare = model.head(build_model("b-b", model.black_box, 0)(x)).numpy()  # same head, no prompts
    got = onnx_logits(out, x)
    assert relative(got, ref) < 1e-4
    assert relative(got, bare) > 1e-2  # the prompts are in the graph


def test_export_bakes_coop_text_features_in(colors: Path, clip_spec: str, tmp_path: Path) -> None:
    import onnx

    from lore.checkpoint import load_run

    run = train(tmp_path / "coop", colors, "--method", "coop", "--coop-ctx", "4", "--knowledge", clip_spec,
                backbone=CLIP)
    out = tmp_path / "coop.onnx"
    assert lore_cli("export", "--run", run, "--out", out) == 0
    model, _ = load_run(run)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model(x).numpy()
        model.ctx.zero_()  # the learnt context matters: without it the logits change
        no_ctx = model(x).numpy()
    got = onnx_logits(out, x)
    assert relative(got, ref) < 1e-4 and relative(got, no_ctx) > 1e-3
    # no text tower in the file: its 49,408-token embedding table is absent
    shapes = [tuple(t.dims) for t in onnx.load(str(out)).graph.initializer]
    assert not any(49408 in s for s in shapes)


def test_export_refuses_to_publish_beyond_the_tolerance(lore_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "strict.onnx"
    assert lore_cli("export", "--run", lore_run, "--out", out, "--tolerance", "1e-30") in (0, 2)
    if out.exists():  # bit-identical logits are possible; then the check passed honestly
        assert json.loads(out.with_suffix(".json").read_text())["checked"]["max_relative_logit_difference"] == 0
    else:
        assert not out.with_suffix(".json").exists() and list(tmp_path.iterdir()) == []
    final = (lore_run / "final.json").read_bytes()  # final.onnx's model sidecar would be final.json
    assert lore_cli("export", "--run", lore_run, "--out", lore_run / "final.onnx") == 2
    assert (lore_run / "final.json").read_bytes() == final and not (lore_run / "final.onnx").exists()
    assert lore_cli("export", "--run", lore_run, "--out", tmp_path / "model.txt") == 2


def test_the_readme_onnxruntime_snippet_gives_lore_predicts_probabilities(lore_run: Path, tmp_path: Path) -> None:
    import re

    from PIL import Image

    readme = (Path(__file__).resolve().parents[1] / "docs" / "after-training.md").read_text()
    snippet = re.search(r"Using it from onnxruntime:\n\n```python\n(.*?)```", readme, re.S).group(1)
    out = tmp_path / "m.onnx"
    assert lore_cli("export", "--run", lore_run, "--out", out) == 0
    rng = np.random.default_rng(0)
    images = []  # odd, non-square sizes: the resize truncates and the crop offset rounds a half
    for w, h in ((45, 37), (37, 45), (50, 33), (41, 41)):
        images.append(tmp_path / f"{w}x{h}.png")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(images[-1])
    assert lore_cli("predict", "--run", lore_run, *images, "--out", tmp_path / "p.jsonl", "--workers", 0,
                    "--topk", 9) == 0
    predicted = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    for image, row in zip(images, predicted):
        code = snippet.replace("flowers-lore.json", str(out.with_suffix(".json"))).replace(
            "flowers-lore.onnx", str(out)).replace("photo.jpg", str(image)).replace("print(", "str(")
        scope: dict = {}
        exec(code, scope)
        logits = scope["logits"][0].astype(np.float64)
        probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        names = scope["meta"]["classnames"]
        for k in range(1, len(names) + 1):
            assert probs[names.index(row[f"class_{k}"])] == pytest.approx(row[f"probability_{k}"], abs=2e-5)


def test_a_description_that_cannot_be_staged_publishes_nothing_and_names_the_real_file(lore_run: Path, tmp_path: Path,
                                                                                      monkeypatch, capsys) -> None:
    import lore.io

    def full(path, *args, **kwargs):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(lore.io, "atomic_write_json", full)
    out = tmp_path / "m.onnx"
    assert lore_cli("export", "--run", lore_run, "--out", out) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"cannot write {out.with_suffix('.json')} (No space left on device)" in line and ".m.onnx." not in line
    assert list(tmp_path.iterdir()) == []
