"""After training: `lore predict` on unlabelled images, `lore export` to ONNX, TensorBoard logs."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import TINY_32, TINY_BACKBONE, lore_cli, tiny_clip_spec

CLIP = ["--backbone", "vit_base_patch16_clip_quickgelu_224.openai", "--no-pretrained", "--backbone-args",
        TINY_32, "--img-size", "32",
        "--workers", "0"]


def train(out: Path, data: Path, *extra: str, backbone=TINY_BACKBONE) -> Path:
    assert lore_cli("train", *backbone, "--data", data, "--shots", 2, "--epochs", 2, "--batch-size", 4,
                    "--device", "cpu", "--out", out, *extra) == 0
    return out


@pytest.fixture(scope="module")
def lore_run(colors, tmp_path_factory) -> Path:
    return train(tmp_path_factory.mktemp("runs") / "lore", colors, "--method", "lore", "--knowledge", "ngram:16")


@pytest.fixture(scope="module")
def clip_spec(tmp_path_factory) -> str:
    return tiny_clip_spec(tmp_path_factory.mktemp("clip"))


# ------------------------------------------------------------------------------------------------ predict


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_predict_marks_a_corrupt_image_and_agrees_with_eval(lore_run: Path, colors: Path, tmp_path: Path) -> None:
    """A folder with a nested folder and a corrupt file: one row per image in a stable order, the bad
    one marked and counted; on the labelled test images the predictions score what `lore eval` scores
    and equal the model's own argmax."""
    from lore.checkpoint import load_run
    from lore.data import eval_transform, load_image

    images = tmp_path / "images"
    shutil.copytree(colors / "test", images / "nested")
    (images / "broken.png").write_bytes(b"this is not a png")
    out = tmp_path / "pred.csv"
    assert lore_cli("predict", "--run", lore_run, images, "--out", out, "--topk", 3, "--workers", 0,
                    "--device", "cpu") == 0
    rows = read_csv(out)
    good = sorted(str(p) for p in (colors / "test").rglob("*.png"))
    assert len(rows) == len(good) + 1
    bad = [r for r in rows if r["status"] != "ok"]
    assert [Path(r["path"]).name for r in bad] == ["broken.png"] and bad[0]["status"].startswith("error:")
    assert bad[0]["class"] == "" and bad[0]["probability"] == ""
    ok = [r for r in rows if r["status"] == "ok"]
    classes = json.loads((lore_run / "model.json").read_text())["classnames"]
    for r in ok:  # probabilities are sorted, the first top-k entry is the prediction
        p = [float(r[f"probability_{j}"]) for j in (1, 2, 3)]
        assert p == sorted(p, reverse=True) and r["class_1"] == r["class"] and r["class"] in classes
        assert 0 < float(r["probability"]) <= 1
    truth = [Path(r["path"]).parent.name for r in ok]
    acc = np.mean([r["class"] == t for r, t in zip(ok, truth)])
    assert lore_cli("eval", "--run", lore_run, "--workers", 0, "--device", "cpu", "--out", tmp_path / "ev") == 0
    assert acc == pytest.approx(json.loads((tmp_path / "ev" / "eval_test.json").read_text())["acc1"])
    model, _ = load_run(lore_run)
    crop = yaml.safe_load((lore_run / "config.yaml").read_text())["crop_pct"]  # the run's, not the backbone's
    tf = eval_transform(32, {**model.black_box.data_config, "crop_pct": crop})
    with torch.no_grad():
        logits = model(torch.stack([tf(load_image(r["path"])) for r in ok]))
    assert [classes[i] for i in logits.argmax(-1).tolist()] == [r["class"] for r in ok]
    assert np.allclose([float(r["probability"]) for r in ok], logits.softmax(-1).max(-1).values.numpy(), atol=2e-6)


def test_predict_reads_a_list_file_writes_jsonl_and_refuses_to_replace_run_files(lore_run: Path, colors: Path,
                                                                                 tmp_path: Path) -> None:
    red = sorted((colors / "test" / "red").glob("*.png"))[:2]
    listing = tmp_path / "list.txt"
    listing.write_text(f"# two images and a missing one\n{red[0]}\n\n{red[1]}\nmissing.png\n")
    out = tmp_path / "p.jsonl"
    assert lore_cli("predict", "--run", lore_run, listing, "--out", out, "--topk", 9, "--workers", 0) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["status"] for r in records] == ["ok", "ok", "error: file not found"]
    assert "class_4" in records[0] and "class_5" not in records[0]  # top-k capped at the 4 classes
    before = (lore_run / "model.json").read_bytes()
    assert lore_cli("predict", "--run", lore_run, red[0], "--out", lore_run / "model.json") == 2
    assert (lore_run / "model.json").read_bytes() == before
    assert lore_cli("predict", "--run", lore_run, tmp_path / "nowhere") == 2


def test_predict_works_for_a_training_free_clip_run(colors: Path, clip_spec: str, tmp_path: Path) -> None:
    run = train(tmp_path / "zs", colors, "--method", "zeroshot", "--knowledge", clip_spec, backbone=CLIP)
    out = tmp_path / "zs.csv"
    assert lore_cli("predict", "--run", run, colors / "test" / "blue", "--out", out, "--workers", 0) == 0
    assert all(r["status"] == "ok" and r["class"] for r in read_csv(out))


# ------------------------------------------------------------------------------------------------ export


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


# ------------------------------------------------------------------------------------------------ tensorboard


def test_tensorboard_scalars_equal_metrics_jsonl(colors: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = train(tmp_path / "tb", colors, "--method", "lore", "--knowledge", "ngram:16", "--log", "tensorboard",
                "--log-images")
    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    tags = {"loss": "loss/total", "loss_task": "loss/task", "loss_kp": "loss/kp", "lr": "lr",
            "train_acc": "accuracy/train"}
    for key, name in tags.items():
        events = acc.Scalars(name)
        assert [e.step for e in events] == [line["epoch"] for line in lines]
        assert [e.value for e in events] == pytest.approx([line[key] for line in lines], rel=1e-6)
    final = json.loads((run / "final.json").read_text())
    assert acc.Scalars("accuracy/test")[-1].value == pytest.approx(final["test_acc1"], rel=1e-6)
    assert acc.Tags()["images"] == ["attention"]


def test_tensorboard_missing_is_one_error_before_training(colors: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    import builtins

    real = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name == "tensorboard" or name.startswith("torch.utils.tensorboard"):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    out = tmp_path / "run"
    assert lore_cli("train", *TINY_BACKBONE, "--data", colors, "--shots", 2, "--epochs", 1, "--out", out,
                    "--method", "vpt-deep", "--log", "tensorboard") == 2
    assert "pip install 'lore[tb]'" in capsys.readouterr().err and not out.exists()


def test_sweep_cells_log_into_their_own_run_folders(colors: Path, tmp_path: Path) -> None:
    """`tensorboard --logdir SWEEP` then finds one run per cell."""
    out = tmp_path / "sweep"
    assert lore_cli("sweep", "--methods", "linear,vpt-deep", "--datasets", f"colors={colors}", "--shots", 2,
                    "--seeds", 1, "--epochs", 1, "--batch-size", 4, *TINY_BACKBONE, "--device", "cpu",
                    "--log", "tensorboard", "--out", out) == 0
    event_dirs = sorted(str(p.parent.relative_to(out)) for p in out.rglob("events.out.tfevents.*"))
    assert sorted(set(event_dirs)) == ["colors/linear/2shot/seed1/tb", "colors/vpt-deep/2shot/seed1/tb"]
