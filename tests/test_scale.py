"""Issue 7: torchrun/DDP equivalence, exact resume after SIGKILL, crash-safe saves, safe pickles."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY, TINY_32
from lore.errors import LoreError
from lore.io import load_pickle_safe

BIN = Path(sys.executable).parent
TRAIN = ["train", "--backbone", "vit_small_patch16_224", "--no-pretrained", "--backbone-args", TINY,
         "--img-size", "32", "--workers", "0"]


def _env(threads: int = 1) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    return env


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoint.safetensors"))


def _metrics(run: Path) -> list[dict]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for x in lines:
        x.pop("seconds")
    return lines


def test_torchrun_two_processes_match_one(colors, tmp_path):
    common = [*TRAIN, "--method", "vpt-deep", "--data", str(colors), "--epochs", "2", "--batch-size", "12",
              "--lr", "0.05", "--deterministic"]
    single = tmp_path / "single"
    subprocess.run([sys.executable, "-m", "lore", *common, "--out", str(single)], check=True, env=_env(),
                   capture_output=True)
    ddp = tmp_path / "ddp"
    proc = subprocess.run([str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", "29533",
                           "-m", "lore", *common, "--out", str(ddp), "--device", "cpu"],
                          env=_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = _weights(single), _weights(ddp)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), k
    fa = json.loads((single / "final.json").read_text())
    fb = json.loads((ddp / "final.json").read_text())
    assert fa["test_samples"] == fb["test_samples"] == 24  # sharded evaluation counts every image once
    assert abs(fa["test_acc1"] - fb["test_acc1"]) < 1e-9
    ma, mb = _metrics(single), _metrics(ddp)
    assert [m["epoch"] for m in mb] == [1, 2]
    for x, y in zip(ma, mb):
        assert abs(x["loss"] - y["loss"]) < 1e-4 and x["train_acc"] == y["train_acc"]
    # only rank 0 wrote: one copy of each file, no stray temporaries
    names = sorted(p.name for p in ddp.iterdir())
    assert names == sorted(p.name for p in single.iterdir())
    assert not [p for p in ddp.rglob("*.tmp")]


def test_sigkill_then_resume_equals_uninterrupted(colors, tmp_path):
    """LORE (dropout, BatchNorm, momentum) killed mid-epoch and resumed ends bit-identical."""
    knowledge = tmp_path / "k.npy"
    import numpy as np
    np.save(knowledge, np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32))
    common = [*TRAIN, "--method", "lore", "--wb-norm", "batch", "--data", str(colors), "--knowledge", f"file:{knowledge}",
              "--epochs", "6", "--batch-size", "8", "--save-every", "2", "--deterministic"]
    ref = tmp_path / "ref"
    subprocess.run([sys.executable, "-m", "lore", *common, "--out", str(ref)], check=True, env=_env(),
                   capture_output=True)

    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "lore", *common, "--out", str(run)], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # 6 steps per epoch: wait for a mid-epoch checkpoint of the second epoch, then kill hard
    deadline = time.time() + 120
    target = run / "checkpoints" / "main-step-00000008.safetensors"
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert target.exists() and not (run / "final.json").exists()
    resumed = subprocess.run([sys.executable, "-m", "lore", "train", "--resume", str(run), "--workers", "0"],
                             env=_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    a, b = _weights(ref), _weights(run)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert _metrics(ref) == _metrics(run)  # no duplicated or missing epochs
    assert json.loads((ref / "final.json").read_text())["test_acc1"] == \
        json.loads((run / "final.json").read_text())["test_acc1"]


KILL_DURING_SAVE = r"""
import os, signal, sys
import safetensors.torch as st
from lore import checkpoint
calls = {"n": 0}
real = st.save_file
def dying_save(tensors, path, metadata=None):
    calls["n"] += 1
    if calls["n"] == 2:  # the second training checkpoint: write half of it, then die
        real(tensors, path, metadata=metadata)
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    return real(tensors, path, metadata=metadata)
checkpoint.save_file = dying_save
from lore.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_kill_during_checkpoint_save_keeps_previous(colors, tmp_path):
    run = tmp_path / "run"
    args = [*TRAIN, "--method", "vpt-deep", "--data", str(colors), "--epochs", "3", "--batch-size", "16",
            "--out", str(run)]
    proc = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE, *args], env=_env(), capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    ckpts = sorted((run / "checkpoints").glob("*.safetensors"))
    assert [p.name for p in ckpts] == ["main-step-00000003.safetensors"]  # the half file never got its name
    state = load_file(str(ckpts[0]))  # the previous checkpoint is intact
    assert "model.global_prompts.tokens" in state
    resumed = subprocess.run([sys.executable, "-m", "lore", "train", "--resume", str(run)], env=_env(),
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [m["epoch"] for m in _metrics(run)] == [1, 2, 3]


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_crafted_pickle_is_refused_and_runs_nothing(tmp_path):
    target = tmp_path / "pwned.txt"
    path = tmp_path / "gnd_roxford5k.pkl"
    path.write_bytes(pickle.dumps({"imlist": ["a"], "qimlist": ["b"], "gnd": [_Evil(str(target))]}))
    with pytest.raises(LoreError, match="refused"):
        load_pickle_safe(path)
    assert not target.exists()
    import numpy as np
    ok = tmp_path / "ok.pkl"
    ok.write_bytes(pickle.dumps({"imlist": ["a"], "gnd": [{"easy": np.array([1, 2]), "bbx": [0.0, 1.0]}]}))
    data = load_pickle_safe(ok)
    assert data["gnd"][0]["easy"].tolist() == [1, 2]


def test_nan_loss_stops_with_clear_message_and_keeps_checkpoint(colors, tmp_path, capsys):
    from conftest import TINY_BACKBONE, lore_cli
    run = tmp_path / "nan"
    code = lore_cli("train", "--method", "vpt-deep", *TINY_BACKBONE, "--data", colors, "--out", run,
                    "--epochs", "3", "--batch-size", "16", "--lr", "1e30", "--min-lr", "1e29")
    err = capsys.readouterr().err
    assert code == 2, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("lore: error: loss became") and "step" in line
    assert not (run / "final.json").exists()
    for ckpt in (run / "checkpoints").glob("*.safetensors"):  # whatever was saved holds finite numbers
        assert all(torch.isfinite(t).all() for k, t in load_file(str(ckpt)).items() if t.is_floating_point())


def _one_and_two_processes(common: list[str], tmp_path: Path, port: int) -> tuple[Path, Path]:
    """``lore COMMON`` run in one process and under torchrun with two: the two run directories."""
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    for command in ([sys.executable, "-m", "lore", *common, "--out", str(single)],
                    [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(port), "-m", "lore",
                     *common, "--out", str(ddp), "--device", "cpu"]):
        proc = subprocess.run(command, env=_env(), capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return single, ddp


@pytest.mark.parametrize("curriculum", [[], ["--curriculum", "easy-to-hard", "--shots", "4", "--stage-h-epochs", "1",
                                              "--batch-size", "8"]], ids=["plain", "easy-to-hard"])
def test_torchrun_lore_matches_one_process(curriculum, colors, knowledge_file, tmp_path):
    """LORE's White Box normalises over the batch (BatchNorm in LIN and the PG): under torchrun it
    sees the global batch (SyncBatchNorm on GPUs, CPUSyncBatchNorm on CPU), so two processes take
    the single-process step, also through the easy-to-hard stages (herding, the stage-e model's
    mistakes). Dropout masks are per process, hence --pg-dropout 0 here."""
    common = [*TRAIN, "--method", "lore", "--wb-norm", "batch", "--knowledge", f"file:{knowledge_file}", "--pg-dropout", "0",
              "--data", str(colors), "--epochs", "2", "--batch-size", "12", "--lr", "0.05", "--wd", "0",
              "--aug", "none", "--deterministic", *curriculum]
    single, ddp = _one_and_two_processes(common, tmp_path, port=29535)
    a, b = _weights(single), _weights(ddp)
    assert a.keys() == b.keys() and any(k.endswith("running_var") for k in a)
    for k in a:  # the BatchNorm running statistics included
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5, rtol=1e-4), (k, (a[k] - b[k]).abs().max())
    assert [m["stage"] for m in _metrics(ddp)] == [m["stage"] for m in _metrics(single)]
    for x, y in zip(_metrics(single), _metrics(ddp)):
        assert all(abs(x[term] - y[term]) < 1e-5 for term in x if term.startswith("loss")), (x, y)
    for stage in ("e", "h") if curriculum else ():
        chosen = [json.loads((run / f"fewshot_{stage}.json").read_text()) for run in (single, ddp)]
        assert chosen[0] == chosen[1]


def test_cpu_sync_batchnorm_conversion_keeps_the_layers_tensors():
    from lore.distributed import CPUSyncBatchNorm, convert_sync_batchnorm

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv1d(3, 4, 1), torch.nn.BatchNorm1d(4), torch.nn.GELU())
    bn = net[1]
    x = torch.randn(5, 3, 7)
    expected = net(x)
    convert_sync_batchnorm(net, torch.device("cpu"))
    assert isinstance(net[1], CPUSyncBatchNorm)
    # the optimiser holds the old layer's Parameters: the new one must train those very tensors
    assert net[1].weight is bn.weight and net[1].bias is bn.bias and net[1].running_var is bn.running_var
    torch.nn.init.normal_(bn.weight)
    with torch.no_grad():  # one process: plain BatchNorm, batch statistics included
        bn.running_mean.zero_(), bn.running_var.fill_(1)
    assert torch.allclose(net(x), torch.nn.functional.gelu(torch.nn.functional.batch_norm(
        net[0](x), None, None, bn.weight, bn.bias, training=True)), atol=1e-6)
    assert not torch.allclose(net(x), expected)


# the CLIP prompt learners: ProGrad's projection is not linear, so each process projecting its own
# half-batch gradients would not be the single-process step (the gradients are averaged over the
# processes first); Co-CoOp's meta-net and MaPLe's coupled prompts go through DDP unchanged
DDP_CLIP_METHODS = {"prograd": ["--coop-ctx", "4", "--coop-csc"], "cocoop": [], "maple": ["--maple-depth", "2"]}


@pytest.mark.parametrize("method", sorted(DDP_CLIP_METHODS))
def test_torchrun_clip_prompt_learners_match_one_process(method, colors, tmp_path):
    from conftest import tiny_clip_spec

    spec = tiny_clip_spec(tmp_path, text_layers=2)
    common = ["train", "--method", method, "--backbone", "vit_base_patch16_clip_quickgelu_224.openai",
              "--no-pretrained", "--backbone-args",
              TINY_32 + ",global_pool=avg",
              "--knowledge", spec, *DDP_CLIP_METHODS[method], "--img-size", "32", "--workers", "0",
              "--data", str(colors), "--epochs", "2", "--batch-size", "12", "--lr", "0.05", "--wd", "0",
              "--aug", "none", "--deterministic"]
    single, ddp = _one_and_two_processes(common, tmp_path, port=29534)
    a, b = _weights(single), _weights(ddp)
    assert a.keys() == b.keys() and len(a) >= 1
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-4, rtol=1e-4), (k, (a[k] - b[k]).abs().max())
    for x, y in zip(_metrics(single), _metrics(ddp)):
        assert all(abs(x[term] - y[term]) < 1e-4 for term in x if term.startswith("loss")), (x, y)
