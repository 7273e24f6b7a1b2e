"""Issue 6: `lore demo` end to end on a miniature setting (the real one is `make demo`)."""

from __future__ import annotations

import json

from conftest import lore_cli


def test_demo_runs_all_four_methods_and_caches_pretraining(tmp_path, capsys):
    args = ["demo", "--out", tmp_path, "--upstream-per-class", "6", "--pretrain-epochs", "1",
            "--test-per-class", "3", "--shots", "2", "--epochs", "1"]
    assert lore_cli(*args) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "results.json").read_text())
    assert list(summary["results"]) == ["linear", "vpt-deep", "lore-no-kp", "lore"]
    for name, r in summary["results"].items():
        final = json.loads((tmp_path / "runs" / name / "final.json").read_text())
        assert r["test_acc1"] == final["test_acc1"]  # the table shows what the runs measured
        assert f"| {name} |" in out
    table = (tmp_path / "results.md").read_text()
    assert all(f"| {m} |" in table for m in summary["results"])
    assert (tmp_path / "report.html").is_file() and (tmp_path / "attention.png").is_file()
    weights = tmp_path / "upstream" / "backbone.safetensors"
    stamp = weights.stat().st_mtime_ns
    # second run: pre-training and finished runs are reused, nothing is recomputed
    assert lore_cli(*args) == 0
    assert "cached" in capsys.readouterr().err
    assert weights.stat().st_mtime_ns == stamp
