"""Grids on several processes with one outcome (lore.grid): the local launcher, processes sharing
one --out, a worker killed mid-cell, and `lore grid status`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY_BACKBONE, lore_cli

SRC = Path(__file__).parents[1] / "src"
# 8 tiny cells: one method, 2 shot counts x 4 seeds, 3 epochs with a checkpoint every 2 steps
GRID = ["sweep", "--methods", "linear", "--shots", "1,2", "--seeds", "1,2,3,4", *TINY_BACKBONE,
        "--epochs", "3", "--batch-size", "4", "--save-every", "2", "--device", "cpu"]


def _grid(colors: Path, out: Path, *extra: str) -> list[str]:
    return [str(a) for a in (*GRID, "--datasets", f"c={colors}", "--out", out, *extra)]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


def _two_at_once(argv: list[str]) -> list[tuple[str, str]]:
    """Two `lore` processes started together on the same arguments; both must exit 0."""
    procs = [subprocess.Popen([sys.executable, "-m", "lore", *argv], env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (_, stderr) in zip(procs, outputs):
        assert p.returncode == 0, stderr[-3000:]
    return outputs


def _numbers(out: Path) -> list:
    table = json.loads((out / "table.json").read_text())
    return [(c["method"], c["shots"], c["n"], c["mean"], c["std"]) for c in table["cells"]], table["failed"]


def _trained_once(out: Path, epochs: int = 3) -> None:
    cells = sorted(out.glob("c/linear/*shot/seed*"))
    assert len(cells) == 8
    for cell in cells:  # one line per epoch: a second training would have been refused or appended
        lines = (cell / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["epoch"] for line in lines] == list(range(1, epochs + 1)), cell


@pytest.fixture(scope="module")
def inline_grid(colors, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("grid") / "inline"
    assert lore_cli(*_grid(colors, out)) == 0
    return out


def test_local_launcher_table_equals_inline(colors, inline_grid, tmp_path, capsys):
    out = tmp_path / "local"
    assert lore_cli(*_grid(colors, out, "--launcher", "local", "--jobs", "2")) == 0
    assert _numbers(out) == _numbers(inline_grid)
    _trained_once(out)
    manifest = json.loads((out / "grid" / "manifest.json").read_text())
    assert manifest["jobs"] == 2 and len(manifest["phases"][0]["cells"]) == 8
    assert len(list((out / "grid" / "cells" / "sweep").glob("*.json"))) == 8
    # a re-run reads every outcome, trains nothing
    capsys.readouterr()
    assert lore_cli(*_grid(colors, out, "--jobs", "2")) == 0
    _trained_once(out)
    assert _numbers(out) == _numbers(inline_grid)


def test_two_concurrent_sweeps_share_one_out(colors, inline_grid, tmp_path):
    out = tmp_path / "shared"
    outputs = _two_at_once(_grid(colors, out))
    _trained_once(out)
    ran = sum(err.count(": ran,") + err.count(": resumed,") for _, err in outputs)
    assert ran == 8  # every cell trained by exactly one of the two
    assert _numbers(out) == _numbers(inline_grid)
    tables = [stdout for stdout, _ in outputs]
    assert tables[0] == tables[1]  # both printed the same complete table


def test_worker_killed_mid_cell_is_resumed(colors, inline_grid, tmp_path, capsys):
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "lore", *_grid(colors, out)], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, victim = time.time() + 300, None
    while victim is None and proc.poll() is None and time.time() < deadline:
        found = next((c for c in out.glob("c/linear/*shot/seed*")
                      if list(c.glob("checkpoints/*.safetensors")) and not (c / "final.json").exists()), None)
        if found is not None:
            # freeze first: a fast cell may finish between the look and the kill
            proc.send_signal(signal.SIGSTOP)
            if (found / "final.json").exists():
                proc.send_signal(signal.SIGCONT)
            else:
                victim = found
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert victim is not None and not (victim / "final.json").exists()
    assert lore_cli(*_grid(colors, out)) == 0
    err = capsys.readouterr().err
    assert err.count(": resumed,") == 1 and "resumed from" in err  # from its checkpoint, not from scratch
    _trained_once(out)
    assert _numbers(out) == _numbers(inline_grid)


def test_grid_status_counts(tmp_path, capsys):
    from lore import lock

    out = tmp_path / "grid"
    cells = {name: out / "runs" / name for name in ("done", "running", "failed", "pending", "pending2")}
    for d in cells.values():
        d.mkdir(parents=True)
    (cells["done"] / "final.json").write_text(json.dumps({"test_acc1": 0.5, "seconds": 30.0}))
    (cells["failed"] / "failed.json").write_text(json.dumps({"error": "boom: out of memory"}))
    (out / "grid").mkdir()
    (out / "grid" / "manifest.json").write_text(json.dumps(
        {"phases": [{"name": "tune", "cells": [str(d) for d in cells.values()]}], "jobs": 2}))
    fd = lock.acquire(cells["running"])  # held by "another process" (another open file of the lock)
    try:
        assert lore_cli("grid", "status", out) == 0
        text = capsys.readouterr().out
        assert "phase tune: 1 done, 1 running, 1 failed, 2 pending (of 5)" in text
        assert f"running: {cells['running']} (pid {os.getpid()}" in text
        assert f"failed: {cells['failed']}: boom: out of memory" in text
        # 3 cells left (1 running, 2 pending) x 30 s / 2 jobs = 45 s
        assert "30.0 s per finished cell; about 0.8 min left at --jobs 2" in text
    finally:
        os.close(fd)
    assert lore_cli("grid", "status", tmp_path / "nothing") == 2
    assert "manifest.json not found" in capsys.readouterr().err


def test_launch_options_refused_in_one_line(colors, tmp_path, capsys):
    for extra, message in ((["--jobs", "0"], "--jobs must be >= 1"),
                           (["--no-wait"], "--no-wait needs --launcher slurm"),
                           (["--launcher", "slurm", "--slurm-time", "4h"], "--slurm-time '4h'")):
        assert lore_cli(*_grid(colors, tmp_path / "o", *extra)) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def _vtab(root: Path, out: Path, *extra) -> list[str]:
    return [str(a) for a in ("paper", "vtab", "--data-root", root, "--out", out, "--methods", "linear",
                             "--datasets", "patch_camelyon,dsprites_loc", "--seeds", "1", "--lrs", "0.5,2",
                             "--wds", "0", "--epochs", "1", "--batch-size", "4", *TINY_BACKBONE, "--device", "cpu",
                             *extra)]


@pytest.fixture(scope="module")
def vtab_root(tmp_path_factory) -> Path:
    from test_petl import write_vtab_task

    root = tmp_path_factory.mktemp("vtab-root")
    for folder, classes in (("patch_camelyon", 2), ("dsprites_loc", 16)):
        write_vtab_task(root / folder, classes, train=1)
    return root


def _petl_table(out: Path) -> tuple[list, list]:
    table = json.loads((out / "table.json").read_text())
    runs = [(r["method"], r["task"], r["chosen"], [t["status"] for t in r["tuned"]],
             [(f["seed"], f["status"], f["test_acc1"]) for f in r["finals"]]) for r in table["runs"]]
    return runs, table["records"]


def test_vtab_two_phases_on_the_local_launcher_pick_the_inline_pair(vtab_root, tmp_path):
    inline, local = tmp_path / "inline", tmp_path / "local"
    assert lore_cli(*_vtab(vtab_root, inline)) == 0
    assert lore_cli(*_vtab(vtab_root, local, "--launcher", "local", "--jobs", "2")) == 0
    assert _petl_table(local) == _petl_table(inline)
    manifest = json.loads((local / "grid" / "manifest.json").read_text())
    assert [(p["name"], len(p["cells"])) for p in manifest["phases"]] == [("vtab-tune", 4), ("vtab-final", 2)]


def test_two_concurrent_vtab_grids_agree(vtab_root, tmp_path):
    out = tmp_path / "shared"
    outputs = _two_at_once(_vtab(vtab_root, out))
    assert not any("FAILED" in stderr for _, stderr in outputs)
    assert outputs[0][0] == outputs[1][0]  # the same complete table printed by both
    runs, _ = _petl_table(out)
    assert all(chosen is not None and set(tuned) == {"done"} and [f[1] for f in finals] == ["done"]
               for _, _, chosen, tuned, finals in runs)
    ran = sum(err.count(": ran,") for _, err in outputs)
    assert ran == 4 + 2  # every tuning run and every final run trained once, by one of the two


def test_recorded_failure_is_kept_by_a_concurrent_command_and_retried_by_a_later_one(tmp_path, capsys):
    from lore import config as config_mod
    from lore.grid import LaunchOptions, run_phase

    cfg = config_mod.make({"method": "linear", "data": str(tmp_path / "nope"), "out": str(tmp_path / "g" / "cell"),
                           "backbone": "vit_small_patch16_224", "pretrained": False, "backbone_args": TINY_BACKBONE[4],
                           "img_size": 32, "workers": 0, "device": "cpu"})
    beside = LaunchOptions()  # a command started before the failure, running beside the one that records it
    time.sleep(0.05)
    first = run_phase(tmp_path / "g", "p", [(cfg, "[1/1] cell:")])
    assert first[0]["status"] == "failed" and "nope" in first[0]["error"]
    failed = tmp_path / "g" / "cell" / "failed.json"
    stamp = failed.stat().st_mtime_ns
    assert run_phase(tmp_path / "g", "p", [(cfg, "[1/1] cell:")], beside) == first  # kept: both agree
    assert failed.stat().st_mtime_ns == stamp and capsys.readouterr().err.count("FAILED") == 1
    time.sleep(0.05)
    assert run_phase(tmp_path / "g", "p", [(cfg, "[1/1] cell:")], LaunchOptions()) == first  # tried again
    assert failed.stat().st_mtime_ns != stamp
