"""lore.tensorboard_log: the event files hold what metrics.jsonl holds, per run folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import TINY_BACKBONE, lore_cli, train_tiny as train


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
    assert "pip install 'lore-vit[tb]'" in capsys.readouterr().err and not out.exists()


def test_sweep_cells_log_into_their_own_run_folders(colors: Path, tmp_path: Path) -> None:
    """`tensorboard --logdir SWEEP` then finds one run per cell."""
    out = tmp_path / "sweep"
    assert lore_cli("sweep", "--methods", "linear,vpt-deep", "--datasets", f"colors={colors}", "--shots", 2,
                    "--seeds", 1, "--epochs", 1, "--batch-size", 4, *TINY_BACKBONE, "--device", "cpu",
                    "--log", "tensorboard", "--out", out) == 0
    event_dirs = sorted(str(p.parent.relative_to(out)) for p in out.rglob("events.out.tfevents.*"))
    assert sorted(set(event_dirs)) == ["colors/linear/2shot/seed1/tb", "colors/vpt-deep/2shot/seed1/tb"]
