"""``--launcher slurm`` against a real single-node SLURM (scripts/install_slurm.sh): a sweep as one
job array equals the in-process sweep, a requeued task resumes its cell from the checkpoint, the
batch script carries the options asked for, and a multi-task job trains one cell under DDP."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from lore.cli import main
from lore.grid import slurm
from lore.grid.options import LaunchOptions
from lore.synthetic.colors import write_imagefolder

from conftest import TINY  # noqa: E402

submitit = pytest.importorskip("submitit", reason="submitit is not installed (pip install 'lore-vit[slurm]')")

ROOT = Path(__file__).resolve().parents[1]
CELL = ["--backbone", "vit_small_patch16_224", "--no-pretrained", "--backbone-args", TINY, "--img-size", "32",
        "--workers", "0", "--device", "cpu", "--batch-size", "4", "--shots", "2"]
# one CPU per task: the machine's cores are shared
SLURM = ["--launcher", "slurm", "--slurm-partition", "debug", "--slurm-gpus-per-job", "0",
         "--slurm-cpus-per-task", "1", "--slurm-time", "00:10:00"]


@pytest.fixture(scope="module")
def cluster() -> None:
    """The single-node cluster running (set up by the script when it is not)."""
    done = subprocess.run(["bash", str(ROOT / "scripts" / "install_slurm.sh")], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"SLURM cannot run here: {(done.stderr.strip().splitlines() or ['?'])[-1]}")


@pytest.fixture(autouse=True)
def fast_polling(monkeypatch) -> None:
    monkeypatch.setattr(slurm, "POLL_SECONDS", 0.5)


def task_logs(out: Path) -> dict[str, str]:
    """stderr of every array task, by submitit's job id (ARRAY_TASK)."""
    return {p.parent.name: p.read_text(errors="replace") for p in (out / "slurm").glob("*/*_0_log.err")}


def wait_for(condition, seconds: float, what: str, out: Path | None = None) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        logs = "\n".join(t[-1500:] for t in task_logs(out).values()) if out else ""
        assert time.monotonic() < deadline, f"timed out waiting for {what}; task logs:\n{logs}"
        time.sleep(0.2)


def test_sweep_as_a_job_array_equals_inline_and_the_batch_script_says_what_was_asked(
        cluster, tmp_path: Path) -> None:
    data = write_imagefolder(tmp_path / "colors", n_train=4, n_test=3)
    grid = ["sweep", "--methods", "linear,vpt-shallow", "--datasets", f"colors={data}", "--seeds", "1,2",
            "--epochs", "1", *CELL]
    out = tmp_path / "slurm"
    assert main([*grid, "--out", str(out), *SLURM, "--slurm-array-parallelism", "2"]) == 0
    assert main([*grid, "--out", str(tmp_path / "inline")]) == 0

    table = json.loads((out / "table.json").read_text())
    inline = json.loads((tmp_path / "inline" / "table.json").read_text())
    assert [(c["method"], c["mean"], c["std"], c["n"]) for c in table["cells"]] == \
        [(c["method"], c["mean"], c["std"], c["n"]) for c in inline["cells"]]
    assert all(c["n"] == 2 for c in table["cells"])
    # every cell trained once, by an array task (not by the command after the array ended)
    logs = task_logs(out)
    assert len(logs) == 4 and {k.split("_")[1] for k in logs} == {"0", "1", "2", "3"}
    assert all(re.search(r"\] (linear|vpt-shallow) / colors / 2-shot / seed \d: ran, test top-1", t)
               for t in logs.values()), logs
    for run in out.glob("colors/*/2shot/seed*"):
        assert len((run / "metrics.jsonl").read_text().splitlines()) == 1

    # submitit's batch script: partition, CPUs, no GPU, time (minutes), 4 tasks at most 2 at once
    script = next((out / "slurm").glob("*/*_submission.sh")).read_text()
    for line in ("#SBATCH --partition=debug", "#SBATCH --cpus-per-task=1", "#SBATCH --time=10",
                 "#SBATCH --array=0-3%2", "#SBATCH --job-name=lore-sweep", "#SBATCH --ntasks-per-node=1"):
        assert line in script.splitlines(), (line, script)
    assert "--gpus" not in script and "--gres" not in script


def test_batch_script_for_gpus_account_qos_constraint_and_memory(tmp_path: Path) -> None:
    opts = LaunchOptions(launcher="slurm", slurm_partition="gpu", slurm_gpus_per_job=4, slurm_cpus_per_task=8,
                         slurm_time="1-04:00:30", slurm_array_parallelism=64, slurm_account="A",
                         slurm_qos="Q", slurm_constraint="a100", slurm_mem_gb=64)
    executor = submitit.AutoExecutor(folder=str(tmp_path / "%j"), cluster="slurm")
    executor.update_parameters(**slurm.executor_parameters(opts, "lore-tune"))
    lines = executor._executor._make_submission_file_text("true", "uid").splitlines()
    for line in ("--partition=gpu", "--gpus-per-node=4", "--ntasks-per-node=4", "--cpus-per-task=8",
                 "--time=1681", "--account=A", "--qos=Q", "--constraint=a100", "--mem=64GB",
                 "--job-name=lore-tune", "--signal=USR2@90"):
        assert f"#SBATCH {line}" in lines, line
    # a short limit: SLURM's warning still leaves the task most of its time
    short = slurm.executor_parameters(LaunchOptions(launcher="slurm", slurm_time="00:01:00"), "x")
    assert short["timeout_min"] == 1 and short["slurm_signal_delay_s"] == 10
    assert slurm.executor_parameters(LaunchOptions(launcher="slurm", slurm_time="00:00:30"), "x")["timeout_min"] == 1


def test_a_requeued_task_resumes_its_cell_from_the_checkpoint(cluster, tmp_path: Path, capsys) -> None:
    data = write_imagefolder(tmp_path / "colors", n_train=4, n_test=3)
    epochs = 150
    out = tmp_path / "out"
    grid = ["sweep", "--methods", "vpt-shallow", "--datasets", f"colors={data}", "--seeds", "1",
            "--epochs", str(epochs), *CELL, "--out", str(out), *SLURM]
    main([*grid, "--no-wait"])  # the table is not complete yet: the cell is still queued
    job = re.search(r"SLURM job array (\d+)", capsys.readouterr().err).group(1)
    main([*grid, "--no-wait"])  # again, while that array is queued or running: nothing new submitted
    assert f"SLURM job array {job} of an earlier invocation is still queued or running" in capsys.readouterr().err
    run = out / "colors" / "vpt-shallow" / "2shot" / "seed1"
    metrics = run / "metrics.jsonl"
    wait_for(lambda: metrics.is_file() and len(metrics.read_text().splitlines()) >= 2, 120, "two epochs", out)
    # SLURM's warning before a preemption or the time limit: submitit checkpoints the call and
    # requeues the task (scontrol requeue), which kills it
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    state = lambda: subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True,  # noqa: E731
                                   text=True).stdout.strip()
    wait_for(lambda: state() == "PENDING", 60, "the requeued task", out)
    assert not (run / "final.json").exists(), "the cell finished before the signal: give it more epochs"
    # a requeued job waits (BeginTime) before it may start again; this test does not
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
    capsys.readouterr()
    # the same command, waiting this time: it waits for the array submitted above, then writes the table
    assert main(grid) == 0
    assert f"SLURM job array {job} of an earlier invocation is still queued or running" in capsys.readouterr().err
    assert json.loads((out / "table.json").read_text())["cells"][0]["n"] == 1

    log = next(iter(task_logs(out).values()))
    assert "Caught signal SIGUSR2" in log, log[-2000:]
    resumed = re.search(r"resumed from \S+ \(epoch (\d+), step \d+\)", log)
    assert resumed and 1 <= int(resumed.group(1)) < epochs, log[-2000:]
    assert "vpt-shallow / colors / 2-shot / seed 1: resumed, test top-1" in log
    # every epoch's metrics line once: the cell went on from its checkpoint, not from scratch
    assert [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()] == list(range(1, epochs + 1))
    # the same command again collects the table, submitting nothing
    capsys.readouterr()
    assert main(grid) == 0
    assert "SLURM job array" not in capsys.readouterr().err
    assert json.loads((out / "table.json").read_text())["cells"][0]["n"] == 1


def test_a_cell_on_two_tasks_trains_once_under_ddp_as_one_process_would(cluster, tmp_path: Path) -> None:
    """What --slurm-gpus-per-job 2 submits (2 tasks of one job), on CPUs: gloo instead of NCCL."""
    from lore.config import make

    data = write_imagefolder(tmp_path / "colors", n_train=4, n_test=3)
    values = {"method": "vpt-shallow", "data": str(data), "backbone": "vit_small_patch16_224", "pretrained": False,
              "backbone_args": TINY, "img_size": 32, "workers": 0, "device": "cpu", "batch_size": 4, "shots": 2,
              "epochs": 2}
    cell = tmp_path / "00000.json"
    cell.write_text(json.dumps({"config": {**values, "out": str(tmp_path / "ddp")}, "prefix": "[ddp]"}))
    executor = submitit.AutoExecutor(folder=str(tmp_path / "slurm" / "%j"), cluster="slurm")
    executor.update_parameters(nodes=1, tasks_per_node=2, cpus_per_task=1, timeout_min=5, slurm_partition="debug")
    results = executor.submit(slurm.CellTask(), str(cell)).results()
    assert [r["status"] for r in results] == ["done", "done"], results
    assert results[0]["final"]["test_acc1"] == results[1]["final"]["test_acc1"]

    from lore.grid.worker import run_cell
    one = run_cell(make({**values, "out": str(tmp_path / "one")}), "[one]")
    assert one["status"] == "done"
    # the global batch split over two processes trains what one process trains
    assert results[0]["final"]["test_acc1"] == pytest.approx(one["final"]["test_acc1"])
    ddp, single = ([json.loads(line) for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
                   for d in ("ddp", "one"))
    assert [m["epoch"] for m in ddp] == [1, 2]
    for a, b in zip(ddp, single):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4) and a["train_acc"] == pytest.approx(b["train_acc"])


def test_without_submitit_or_with_a_refused_submission_one_line(cluster, tmp_path: Path, monkeypatch) -> None:
    from lore.errors import LoreError

    cell = tmp_path / "cells" / "tune" / "00000.json"
    cell.parent.mkdir(parents=True)
    cell.write_text(json.dumps({"config": {"out": str(tmp_path / "run")}, "prefix": "[1/1]"}))
    opts = LaunchOptions(launcher="slurm", slurm_partition="no-such-partition", slurm_gpus_per_job=0)
    with pytest.raises(LoreError, match=r"^--launcher slurm: sbatch refused the job array of phase tune: .*"
                                        r"[Pp]artition") as e:
        slurm.launch([cell], opts, tmp_path / "slurm", wait=True)
    assert "\n" not in str(e.value)
    monkeypatch.setattr(slurm, "submitit", None)
    with pytest.raises(LoreError, match=r"^--launcher slurm needs submitit: pip install 'lore-vit\[slurm\]'$"):
        slurm.launch([cell], opts, tmp_path / "slurm", wait=True)


def test_a_cell_its_task_left_unfinished_is_recorded_as_failed_naming_the_log(tmp_path: Path) -> None:
    from lore.grid.worker import recorded_failure

    runs = {name: tmp_path / name for name in ("crashed", "finished")}
    runs["finished"].mkdir()
    (runs["finished"] / "final.json").write_text(json.dumps({"test_acc1": 0.5}))
    for name, run in runs.items():
        cell = tmp_path / f"{name}.json"
        cell.write_text(json.dumps({"config": {"out": str(run)}, "prefix": name}))
        slurm.record_unfinished(cell, tmp_path / "slurm" / "7_0" / "7_0_0_log.err")
    assert recorded_failure(runs["crashed"]) == \
        f"its SLURM task ended without finishing it; see {tmp_path / 'slurm' / '7_0' / '7_0_0_log.err'}"
    assert recorded_failure(runs["finished"]) is None
