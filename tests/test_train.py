"""lore.train: every method learns, reloads bit-identically, options take precedence as
documented, bad input is one clear line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import TINY, TINY_BACKBONE, lore_cli
from lore.backbone import build_black_box
from lore.checkpoint import load_run


@pytest.mark.parametrize("method", ["linear", "vpt-shallow", "vpt-deep"])
def test_methods_learn_colours(method, colors, tmp_path):
    out = tmp_path / method
    torch.manual_seed(1993)  # the run's seed: a random-init backbone is built the same way
    bb = build_black_box("vit_small_patch16_224", pretrained=False, backbone_args=TINY)
    code = lore_cli("train", "--method", method, *TINY_BACKBONE, "--data", colors, "--out", out,
                    "--epochs", "20", "--batch-size", "16", "--lr", "0.05", "--min-lr", "0.001")
    assert code == 0
    final = json.loads((out / "final.json").read_text())
    assert final["test_acc1"] >= 0.9, final
    assert final["test_samples"] == 24
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == list(range(1, 21))
    assert {"epoch", "lr", "loss", "train_acc", "seconds"} <= set(lines[0])
    assert lines[-1]["loss"] < lines[0]["loss"]
    assert (out / "config.yaml").is_file() and "method: " + method in (out / "config.yaml").read_text()

    # the checkpoint holds no backbone tensor, and the backbone did not move
    state = load_file(str(out / "checkpoint.safetensors"))
    assert state and not any(k.startswith("black_box") for k in state)
    model, meta = load_run(out)
    for (k, v), (k2, v2) in zip(bb.state_dict().items(), model.black_box.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    assert final["trainable_params"] == sum(v.numel() for v in state.values())

    # reloading predicts exactly what evaluation measured
    assert lore_cli("eval", "--run", out, "--workers", "0") == 0
    again = json.loads((out / "eval_test.json").read_text())
    assert again["acc1"] == final["test_acc1"]


def test_reload_gives_identical_logits(colors, tmp_path):
    out = tmp_path / "run"
    assert lore_cli("train", "--method", "vpt-deep", *TINY_BACKBONE, "--data", colors, "--out", out,
                    "--epochs", "1", "--batch-size", "16") == 0
    a, _ = load_run(out)
    b, _ = load_run(out)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_config_file_and_cli_precedence(colors, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 1\nbatch_size: 8\nlr: 0.01\nmethod: vpt-deep\n")
    out = tmp_path / "run"
    assert lore_cli("train", "--config", cfg, "--method", "linear", *TINY_BACKBONE, "--data", colors,
                    "--out", out) == 0
    import yaml
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["method"] == "linear" and resolved["lr"] == 0.01 and resolved["batch_size"] == 8


def _corrupt_dataset(colors: Path, tmp: Path) -> Path:
    import shutil
    root = tmp / "corrupt"
    shutil.copytree(colors, root)
    (root / "train" / "red" / "red_train_000.png").write_bytes(b"not an image at all")
    return root


def _empty_class(colors: Path, tmp: Path) -> Path:
    import shutil
    root = tmp / "empty"
    shutil.copytree(colors, root)
    (root / "train" / "purple").mkdir()
    return root


def _other_arch_checkpoint(tmp: Path) -> Path:
    torch.manual_seed(0)
    other = build_black_box("vit_small_patch16_224", pretrained=False,
                            backbone_args="img_size=32,patch_size=8,depth=3,embed_dim=96,num_heads=2")
    path = tmp / "other.safetensors"
    save_file({k: v.contiguous() for k, v in other.vit.state_dict().items()}, str(path))
    return path


BAD = {
    "missing data path": (lambda c, t: ["--data", t / "nope"], "no such file"),
    "unknown backbone": (lambda c, t: ["--data", c, "--backbone", "vit_nonexistent_model"], "unknown backbone"),
    "empty class folder": (lambda c, t: ["--data", _empty_class(c, t)], "has no images"),
    "corrupt image": (lambda c, t: ["--data", _corrupt_dataset(c, t)], "cannot decode image"),
    "checkpoint of another architecture": (
        lambda c, t: ["--data", c, "--checkpoint", _other_arch_checkpoint(t)], "does not fit backbone"),
    "too many shots": (lambda c, t: ["--data", c, "--shots", "50"], "--shots 50"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_clear_line(case, colors, tmp_path, capsys):
    make, expected = BAD[case]
    extra = make(colors, tmp_path)
    args = ["train", "--method", "linear", *TINY_BACKBONE, "--out", tmp_path / "out", "--epochs", "1",
            "--batch-size", "8", *extra]
    assert lore_cli(*args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("lore: error:") and expected in err[-1], err
    assert "Traceback" not in "\n".join(err)


def test_bad_input_in_a_subprocess_has_no_traceback(colors, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "lore", "train", "--method", "linear", *TINY_BACKBONE,
                           "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"lore: error: --data {tmp_path / 'missing'}: no such file or directory"]


def test_method_lore_without_knowledge_file_is_clear(colors, tmp_path, capsys):
    code = lore_cli("train", "--method", "lore", *TINY_BACKBONE, "--data", colors, "--out",
                    tmp_path / "o", "--knowledge", "file:" + str(tmp_path / "none.npy"))
    assert code == 2 and "file not found" in capsys.readouterr().err


def test_nan_at_step_k_is_reported_at_step_k_and_no_later_checkpoint(colors, tmp_path, capsys, monkeypatch):
    """The step never reads the loss on the host: the first non-finite step is recorded on the
    device, found at the next read, and named exactly; no checkpoint holds a step after it."""
    from lore.train import loop

    real, calls = loop._Step.forward, {"n": 0}

    def poisoned(self, images, targets, index):
        per_sample, logits, terms = real(self, images, targets, index)
        calls["n"] += 1
        if calls["n"] in (5, 6):  # global steps 4 and 5 (0-based): the first one is the one named
            per_sample = per_sample * float("nan")
        return per_sample, logits, terms

    monkeypatch.setattr(loop._Step, "forward", poisoned)
    run = tmp_path / "nan"
    # 48 training images in batches of 16: 3 steps per epoch, global step 4 = epoch 2, step 1
    code = lore_cli("train", "--method", "vpt-deep", *TINY_BACKBONE, "--data", colors, "--out", run,
                    "--epochs", "4", "--batch-size", "16", "--save-every", "2", "--keep-last", "10")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("lore: error: loss became nan at epoch 2, step 1 (global step 4)"), err[-1]
    saved = sorted(p.name for p in (run / "checkpoints").glob("*.safetensors"))
    assert saved == ["main-step-00000002.safetensors", "main-step-00000003.safetensors",
                     "main-step-00000004.safetensors"]
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1] and not (run / "final.json").exists()
