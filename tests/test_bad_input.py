"""Issue 7: a table of bad (and odd-but-valid) inputs across the CLI.

Each case either works (exit 0) or exits 2 with exactly one line naming the problem; no case
changes files that existed before it ran.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_BACKBONE, lore_cli
from test_tasks import MODEL_ARGS, make_davis, make_oxford, make_spair

TRAIN = ["train", "--method", "linear", *TINY_BACKBONE, "--epochs", "1", "--batch-size", "8"]


def _snapshot(root: Path) -> dict[str, str]:
    # .lock only records the pid of the last process that held the run's lock
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def world(tmp_path_factory, colors):
    """A finished run plus datasets for the cases to spoil."""
    base = tmp_path_factory.mktemp("bad")
    run = base / "run"
    assert lore_cli(*TRAIN, "--data", colors, "--out", run) == 0
    return {"base": base, "run": run, "colors": colors}


def _copy(colors: Path, dest: Path) -> Path:
    if not dest.exists():
        shutil.copytree(colors, dest)
    return dest


def _with_image(w, name: str, save) -> Path:
    root = _copy(w["colors"], w["base"] / name)
    save(root / "train" / "red" / "odd_image.png")
    return root


def _gray(p):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30), dtype=np.uint8), "L").save(p)


def _rgba(p):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30, 4), dtype=np.uint8), "RGBA").save(p)


def _cmyk(p):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30, 4), dtype=np.uint8), "CMYK").save(
        p.with_suffix(".jpg"))


def _sixteen_bit(p):
    Image.fromarray(np.random.default_rng(0).integers(0, 65535, (20, 30), dtype=np.uint16)).save(p)


def _truncated(p):
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 90).save(p)
    p.write_bytes(p.read_bytes()[:60])


def _garbage(p):
    p.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")


def _classnames(w, n):
    f = w["base"] / f"names{n}.txt"
    f.write_text("\n".join(f"c{i}" for i in range(n)))
    return f


def _bad_vpt_json(w):
    d = w["base"] / "vptjson"
    d.mkdir(exist_ok=True)
    (d / "train.json").write_text("{not json")
    return d


def _oxford_garbage_pickle(w):
    root = make_oxford(w["base"] / "ox1")
    (root / "roxford5k" / "gnd_roxford5k.pkl").write_bytes(b"\x80\x04garbage")
    return root


def _oxford_missing_keys(w):
    import pickle
    root = make_oxford(w["base"] / "ox2")
    (root / "roxford5k" / "gnd_roxford5k.pkl").write_bytes(pickle.dumps({"imlist": ["a"]}))
    return root


def _spair_bad_json(w):
    root = make_spair(w["base"] / "spair")
    next((root / "PairAnnotation" / "test").glob("*.json")).write_text('{"src_imname": ')
    return root


def _davis_bad_png(w):
    root = make_davis(w["base"] / "davis")
    (root / "Annotations" / "480p" / "still" / "00000.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    return root


def _knowledge_rows(w, n):
    f = w["base"] / f"k{n}.npy"
    np.save(f, np.ones((n, 8), np.float32))
    return f


# name -> (argv builder, expected exit code, text the error line must contain)
CASES = {
    "missing data path": (lambda w: [*TRAIN, "--data", w["base"] / "nope"], 2, "no such file"),
    "unknown format": (lambda w: [*TRAIN, "--data", w["colors"], "--format", "tfrecord"], 2, "--format"),
    "vpt-json with invalid JSON": (lambda w: [*TRAIN, "--data", _bad_vpt_json(w), "--format", "vpt-json"], 2,
                                   "not valid JSON"),
    "coop-split without split file": (lambda w: [*TRAIN, "--data", w["colors"], "--format", "coop-split"], 2,
                                      "split_zhou"),
    "corrupt image": (lambda w: [*TRAIN, "--data", _with_image(w, "garbage", _garbage)], 2, "cannot decode image"),
    "truncated image": (lambda w: [*TRAIN, "--data", _with_image(w, "trunc", _truncated)], 2, "cannot decode image"),
    "grayscale image works": (lambda w: [*TRAIN, "--data", _with_image(w, "gray", _gray)], 0, ""),
    "RGBA image works": (lambda w: [*TRAIN, "--data", _with_image(w, "rgba", _rgba)], 0, ""),
    "CMYK JPEG works": (lambda w: [*TRAIN, "--data", _with_image(w, "cmyk", _cmyk)], 0, ""),
    "16-bit PNG works": (lambda w: [*TRAIN, "--data", _with_image(w, "16bit", _sixteen_bit)], 0, ""),
    "class list of wrong length": (lambda w: [*TRAIN, "--data", w["colors"], "--classnames", _classnames(w, 3)], 2,
                                   "lists 3 classes"),
    "negative epochs": (lambda w: [*TRAIN, "--data", w["colors"], "--epochs", "-1"], 2, "--epochs"),
    "zero learning rate": (lambda w: [*TRAIN, "--data", w["colors"], "--lr", "0"], 2, "--lr"),
    "zero batch size": (lambda w: [*TRAIN, "--data", w["colors"], "--batch-size", "0"], 2, "--batch-size"),
    "non-numeric option": (lambda w: [*TRAIN, "--data", w["colors"], "--epochs", "many"], 2, "--epochs"),
    "bad backbone args": (lambda w: [*TRAIN, "--data", w["colors"], "--backbone-args", "depth"], 2,
                          "--backbone-args"),
    "cuda on a CPU machine": (lambda w: [*TRAIN, "--data", w["colors"], "--device", "cuda"], 2, "CUDA"),
    "unknown method": (lambda w: [*TRAIN, "--data", w["colors"], "--method", "magic"], 2, "--method"),
    "knowledge rows do not match classes": (
        lambda w: [*TRAIN, "--data", w["colors"], "--method", "lore", "--knowledge", f"file:{_knowledge_rows(w, 3)}"],
        2, "3 rows"),
    "out holds a finished run": (lambda w: [*TRAIN, "--data", w["colors"], "--out", w["run"]], 2, "already holds a run"),
    "eval of a missing run": (lambda w: ["eval", "--run", w["base"] / "norun"], 2, "not a directory"),
    "eval on other classes": (lambda w: ["eval", "--run", w["run"], "--data", _copy_renamed(w), "--workers", "0"], 2,
                              "do not match"),
    "retrieval gnd pickle is garbage": (
        lambda w: ["retrieval", "--dataset", "roxford5k", "--root", _oxford_garbage_pickle(w), "--imsize", 32,
                   *MODEL_ARGS], 2, "gnd_roxford5k.pkl"),
    "retrieval gnd without keys": (
        lambda w: ["retrieval", "--dataset", "roxford5k", "--root", _oxford_missing_keys(w), "--imsize", 32,
                   *MODEL_ARGS], 2, "gnd_roxford5k.pkl"),
    "SPair JSON malformed": (lambda w: ["correspond", "--root", _spair_bad_json(w), "--imsize", 64, *MODEL_ARGS], 2,
                             ".json"),
    "DAVIS annotation PNG malformed": (
        lambda w: ["vos", "--root", _davis_bad_png(w), "--short-side", 64, *MODEL_ARGS], 2, "00000.png"),
    # ---- issue 15, item 3: names read from dataset files stay inside their root
    "DAVIS sequence name escapes the root": (
        lambda w: ["vos", "--root", _davis_escape(w), "--short-side", 64, *MODEL_ARGS], 2, "val.txt, line 2"),
    "SPair image name escapes the root": (
        lambda w: ["correspond", "--root", _spair_escape(w), "--imsize", 64, *MODEL_ARGS], 2, "leads outside"),
    "Oxford image name escapes the root": (
        lambda w: ["retrieval", "--dataset", "roxford5k", "--root", _oxford_escape(w), "--imsize", 32,
                   *MODEL_ARGS], 2, "imlist[2]"),
    # ---- item 4: analysis commands never replace a run's own files
    "attention figure whose side file is the run's model.json": (
        lambda w: ["attention", "--run", w["run"], "--n", 2, "--out", w["run"] / "model.png"], 2, "model.json"),
    "locality output onto the run's final.json": (
        lambda w: ["locality", "--run", w["run"], "--n", 2, "--out", w["run"] / "final.json"], 2, "final.json"),
    "report output onto the run's final.json": (
        lambda w: ["report", w["run"], "--out", w["run"] / "final.json"], 2, "final.json"),
    "task results into a run directory": (
        lambda w: ["vos", "--root", _davis(w), "--short-side", 64, *MODEL_ARGS, "--out", w["run"]], 2,
        "training run's directory"),
    "attention figure with a text suffix": (
        lambda w: ["attention", "--run", w["run"], "--n", 2, "--out", w["base"] / "fig.txt"], 2, ".png"),
    "locality output is a directory": (
        lambda w: ["locality", "--run", w["run"], "--n", 2, "--out", w["base"]], 2, "is a directory"),
    # ---- item 7: one error line (exit 2) instead of a traceback
    "img-size not a multiple of the patch (train)": (
        lambda w: [*TRAIN, "--data", w["colors"], "--img-size", 36], 2, "not a multiple of the backbone's patch"),
    "img-size not a multiple of the patch (attention)": (
        lambda w: ["attention", "--run", w["run"], "--n", 2, "--img-size", 36, "--out", w["base"] / "a.png"], 2,
        "not a multiple"),
    "img-size not a multiple of the patch (locality)": (
        lambda w: ["locality", "--run", w["run"], "--n", 2, "--img-size", 36, "--out", w["base"] / "l.json"], 2,
        "not a multiple"),
    "img-size not a multiple of the patch (bench)": (lambda w: [*BENCH, "--img-size", 36], 2, "not a multiple"),
    "train --out is an existing file": (lambda w: [*TRAIN, "--data", w["colors"], "--out", _file(w)], 2, "is a file"),
    "eval --out is an existing file": (lambda w: ["eval", "--run", w["run"], "--out", _file(w)], 2, "is a file"),
    "dry-run --out is an existing file": (
        lambda w: ["train", "--dry-run", "--num-classes", 3, *TINY_BACKBONE, "--out", _file(w)], 2, "is a file"),
    "bench --out is an existing file": (lambda w: [*BENCH, "--out", _file(w)], 2, "is a file"),
    "sweep --out is an existing file": (
        lambda w: ["sweep", "--methods", "linear", "--datasets", f"c={w['colors']}", "--shots", 1, "--seeds", 1,
                   *TINY_BACKBONE, "--epochs", 1, "--out", _file(w)], 2, "afile is a file where a folder is needed"),
    "train --out on a read-only place": (lambda w: [*TRAIN, "--data", w["colors"], "--out", READ_ONLY], 2,
                                         "cannot write"),
    "eval --out on a read-only place": (lambda w: ["eval", "--run", w["run"], "--out", READ_ONLY], 2, "cannot write"),
    "locality --out on a read-only place": (
        lambda w: ["locality", "--run", w["run"], "--n", 2, "--out", READ_ONLY / "l.json"], 2, "cannot write"),
    "report --out on a read-only place": (lambda w: ["report", w["run"], "--out", READ_ONLY / "r.html"], 2,
                                          "cannot write"),
    "retrieval --out on a read-only place": (
        lambda w: ["retrieval", "--dataset", "roxford5k", "--root", _oxford(w), "--imsize", 32, *MODEL_ARGS,
                   "--out", READ_ONLY], 2, "cannot write"),
    "vos --out on a read-only place": (
        lambda w: ["vos", "--root", _davis(w), "--short-side", 64, *MODEL_ARGS, "--out", READ_ONLY], 2,
        "cannot write"),
    "negative momentum": (lambda w: [*TRAIN, "--data", w["colors"], "--momentum", -3], 2, "--momentum"),
    "learning rate NaN": (lambda w: [*TRAIN, "--data", w["colors"], "--lr", "nan"], 2, "--lr must be a finite"),
    "YAML epochs: ten": (lambda w: [*TRAIN_NO_EPOCHS, "--data", w["colors"], "--config", _yaml(w, "epochs: ten\n")],
                         2, "--epochs must be an integer"),
    "YAML epochs: 1.5": (lambda w: [*TRAIN_NO_EPOCHS, "--data", w["colors"], "--config", _yaml(w, "epochs: 1.5\n")],
                         2, "--epochs must be a whole number"),
    "YAML lr: 1e-3 works": (lambda w: [*TRAIN, "--data", w["colors"], "--config", _yaml(w, "lr: 1e-3\nmin_lr: 1e-5\n")],
                            0, ""),
    "binary YAML file": (lambda w: [*TRAIN, "--data", w["colors"], "--config", _yaml(w, b"\x89PNG\r\n\x1a\n\xff")], 2,
                         "not a valid UTF-8 YAML"),
    "CSV with a short row": (lambda w: [*TRAIN, "--data", _csv(w, "short", "path,label\n{img}\n"), "--format", "csv"],
                             2, "line 2"),
    "CSV with only a header": (lambda w: [*TRAIN, "--data", _csv(w, "header", "path,label\n"), "--format", "csv"], 2,
                               "list no images"),
    "CSV not UTF-8": (lambda w: [*TRAIN, "--data", _csv(w, "latin", b"path,label\n\xff\xfe.png,1\n"), "--format",
                                 "csv"], 2, "not a UTF-8"),
    "decompression-bomb image": (lambda w: [*TRAIN, "--data", _with_image(w, "bomb", _bomb)], 2, "decompression bomb"),
    "eval --batch-size 0": (lambda w: ["eval", "--run", w["run"], "--batch-size", 0], 2, "--batch-size"),
    "eval --workers -2": (lambda w: ["eval", "--run", w["run"], "--workers", -2], 2, "--workers"),
    "bench --threads -2": (lambda w: [*BENCH, "--threads", -2], 2, "--threads"),
    # ---- item 8: the ground-truth pickle
    "gnd pickle that is a text file": (
        lambda w: ["retrieval", "--dataset", "roxford5k", "--root", _oxford_text(w), "--imsize", 32, *MODEL_ARGS], 2,
        "not a pickle"),
    "gnd pickle of 2^40 shared leaves": (
        lambda w: ["retrieval", "--dataset", "roxford5k", "--root", _oxford_bomb(w), "--imsize", 32, *MODEL_ARGS], 2,
        "expands to more than"),
    # ---- should-fix items
    "--pg-dropout out of range": (lambda w: [*TRAIN, "--data", w["colors"], "--pg-dropout", 1], 2,
                                  "--pg-dropout must be in [0, 1), got 1.0"),
    "--holdout 0 on a folder without splits": (
        lambda w: [*TRAIN, "--data", _flat(w), "--holdout", 0], 2, "--holdout 0.0: no image was held out"),
    "a one-class dataset": (lambda w: [*TRAIN, "--data", _one_class(w)], 2, "only one class"),
    "--resume with a recipe flag": (lambda w: ["train", "--resume", w["run"], "--lr", "0.1"], 2,
                                    "--lr 0.1 differs from the run's 0.003"),
    "a checkpoint holding NaN": (lambda w: ["eval", "--run", _nan_run(w), "--workers", 0], 2, "NaN or Inf"),
    "an all-zero knowledge matrix": (
        lambda w: [*TRAIN, "--data", w["colors"], "--method", "lore", "--knowledge", f"file:{_zero_knowledge(w)}"],
        2, "all zeros"),
    "a backbone that is not a ViT": (
        lambda w: ["train", "--dry-run", "--num-classes", 3, "--backbone", "resnet18", "--no-pretrained"], 2,
        "--backbone resnet18 is not a timm Vision Transformer"),
    # ---- item 2
    "batch size 1 with a BatchNorm White Box": (
        lambda w: [*TRAIN, "--data", w["colors"], "--method", "lore", "--wb-norm", "batch",
                   "--knowledge", f"file:{_knowledge_rows(w, 4)}", "--batch-size", 1, "--shots", 1], 2, "--batch-size 1"),
}

READ_ONLY = Path("/sys/lore-read-only-check")  # /sys refuses new files, even to root
TRAIN_NO_EPOCHS = ["train", "--method", "linear", *TINY_BACKBONE, "--batch-size", "8"]
BENCH = ["bench", "--backbone", "vit_small_patch16_224", "--backbone-args", TINY_BACKBONE[4], "--img-size", 32,
         "--batch", 2, "--methods", "b-b", "--repeats", 1, "--warmup", 0, "--device", "cpu"]


def _flat(w) -> Path:
    root = w["base"] / "flat"
    if not root.exists():
        shutil.copytree(w["colors"] / "train", root)
    return root


def _one_class(w) -> Path:
    root = w["base"] / "oneclass"
    if not root.exists():
        for split in ("train", "test"):
            shutil.copytree(w["colors"] / split / "red", root / split / "red")
    return root


def _nan_run(w) -> Path:
    from safetensors.torch import load_file, save_file

    run = w["base"] / "nan_run"
    if not run.exists():
        shutil.copytree(w["run"], run)
        state = load_file(str(run / "checkpoint.safetensors"))
        name = next(k for k, v in state.items() if v.is_floating_point())
        state[name][...] = float("nan")
        save_file(state, str(run / "checkpoint.safetensors"))
    return run


def _zero_knowledge(w) -> Path:
    f = w["base"] / "k_zero.npy"
    np.save(f, np.zeros((4, 8), np.float32))
    return f


def _file(w) -> Path:
    f = w["base"] / "afile"
    f.write_text("not a folder\n")
    return f


def _yaml(w, content: str | bytes) -> Path:
    f = w["base"] / f"cfg_{hashlib.sha256(content if isinstance(content, bytes) else content.encode()).hexdigest()[:8]}.yaml"
    f.write_bytes(content if isinstance(content, bytes) else content.encode())
    return f


def _csv(w, name: str, content: str | bytes) -> Path:
    f = w["base"] / f"{name}.csv"
    if isinstance(content, str):
        content = content.format(img=next((w["colors"] / "train" / "red").iterdir())).encode()
    f.write_bytes(content)
    return f


def _bomb(p):
    """A valid PNG header announcing 20000 x 20000 pixels (the data need not be there: PIL refuses
    it from the header)."""
    import struct
    import zlib

    Image.fromarray(np.zeros((4, 4), np.uint8), "L").save(p)
    data = bytearray(p.read_bytes())
    ihdr = data[12:29]  # b"IHDR" + 13 bytes
    ihdr[4:12] = struct.pack(">II", 20000, 20000)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    p.write_bytes(bytes(data))


def _davis(w) -> Path:
    root = w["base"] / "davis_ok"
    return root if root.exists() else make_davis(root)


def _davis_escape(w) -> Path:
    root = w["base"] / "davis_escape"
    if not root.exists():
        make_davis(root)
        outside = w["base"] / "outside_seq"  # a real sequence folder, reachable only through '..'
        shutil.copytree(root / "JPEGImages" / "480p" / "still", outside)
        (root / "ImageSets" / "2017" / "val.txt").write_text("still\n../../../outside_seq\n")
    return root


def _spair_escape(w) -> Path:
    root = make_spair(w["base"] / "spair_escape")
    f = next((root / "PairAnnotation" / "test").glob("*.json"))
    record = json.loads(f.read_text())
    record["src_imname"] = "../../../../etc/hostname"
    f.write_text(json.dumps(record))
    return root


def _oxford(w) -> Path:
    root = w["base"] / "ox_ok"
    return root if root.exists() else make_oxford(root)


def _oxford_escape(w) -> Path:
    import pickle
    root = make_oxford(w["base"] / "ox_escape")
    gnd_file = root / "roxford5k" / "gnd_roxford5k.pkl"
    gnd = pickle.loads(gnd_file.read_bytes())
    gnd["imlist"][2] = "../../../../etc/hostname"
    gnd_file.write_bytes(pickle.dumps(gnd))
    return root


def _oxford_text(w) -> Path:
    root = make_oxford(w["base"] / "ox_text")
    (root / "roxford5k" / "gnd_roxford5k.pkl").write_text("imlist: db_0\nqimlist: q_0\n")
    return root


def _oxford_bomb(w) -> Path:
    import pickle
    root = make_oxford(w["base"] / "ox_bomb")
    leaf: list = [0]
    for _ in range(40):
        leaf = [leaf, leaf]
    (root / "roxford5k" / "gnd_roxford5k.pkl").write_bytes(
        pickle.dumps({"imlist": leaf, "qimlist": leaf, "gnd": leaf}, protocol=2))
    return root


def _copy_renamed(w) -> Path:
    root = _copy(w["colors"], w["base"] / "renamed")
    for split in ("train", "test"):
        src = root / split / "blue"
        if src.exists():
            src.rename(root / split / "navy")
    return root


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_case(case, world, tmp_path, capsys):
    build, expected_code, text = CASES[case]
    argv = [str(a) for a in build(world)]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    before = _snapshot(world["run"])
    code = lore_cli(*argv)
    err = capsys.readouterr().err
    assert code == expected_code, err[-2000:]
    assert "Traceback" not in err
    if expected_code == 2:
        lines = [ln for ln in err.strip().splitlines() if ln.startswith("lore: error:")]
        assert len(lines) == 1 and text in lines[0], err[-2000:]
    else:
        final = json.loads((tmp_path / "out" / "final.json").read_text())
        assert final["test_samples"] > 0
    assert _snapshot(world["run"]) == before  # nothing that existed was touched


# ============================================================================ issue 15, item 1
# One writer per run: a second process is refused while the first holds the run's lock.

HOLD_LOCK = "import sys; from lore.lock import acquire; acquire(sys.argv[1]); sys.stdin.read()"
SRC = Path(__file__).parents[1] / "src"


def _wait_for_lock(run_dir: Path, proc) -> None:
    """Return once ``proc`` holds the run's lock: the holder writes its pid only after taking it."""
    import time

    lock = run_dir / ".lock"
    deadline = time.monotonic() + 120
    while not (lock.is_file() and lock.read_text().strip() == str(proc.pid)):
        assert proc.poll() is None, "the process exited before taking the lock"
        assert time.monotonic() < deadline, "the process never took the lock"
        time.sleep(0.02)


def _popen(args: list, **kw):
    import os
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, *map(str, args)], env={**os.environ, "PYTHONPATH": str(SRC)},
                            text=True, **kw)


def test_two_lore_train_processes_on_one_run(colors, tmp_path, capsys):
    """A real `lore train` takes the lock and then blocks reading its CSV from a FIFO (so it
    provably holds the lock while the second starts); the second is refused; SIGTERM ends the
    first with one line, and its lock is gone with it."""
    import os
    import signal
    import subprocess

    run, fifo = tmp_path / "run", tmp_path / "data.csv"
    os.mkfifo(fifo)
    first = _popen(["-m", "lore", *TRAIN, "--data", fifo, "--format", "csv", "--out", run], stderr=subprocess.PIPE)
    try:
        _wait_for_lock(run, first)
        second = _popen(["-m", "lore", *TRAIN, "--data", colors, "--out", run], stderr=subprocess.PIPE)
        err = second.communicate(timeout=300)[1]
        assert second.returncode == 2, err[-2000:]
        errors = [ln for ln in err.splitlines() if ln.startswith("lore: error:")]
        assert len(errors) == 1 and "in use by another lore process" in errors[0], err[-2000:]
        assert f"pid {first.pid}" in errors[0] and "Traceback" not in err
        assert sorted(p.name for p in run.iterdir()) == [".lock"]  # the second wrote nothing
        (run / "config.yaml").write_text("method: linear\n")
        assert lore_cli("train", "--resume", run) == 2  # --resume of a run in use
        err = capsys.readouterr().err
        assert "--resume" in err and "in use by another lore process" in err
        first.send_signal(signal.SIGTERM)
        err = first.communicate(timeout=120)[1]
        assert first.returncode == 143 and "lore: terminated (SIGTERM)" in err and "Traceback" not in err
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert not run.exists()  # the first created it and wrote nothing else: it leaves nothing
    assert lore_cli(*TRAIN, "--data", colors, "--out", run) == 0


def test_lock_is_released_on_sigkill_and_a_locked_sweep_cell_is_waited_for(colors, tmp_path, capsys):
    import signal
    import subprocess
    import threading
    import time

    sweep = tmp_path / "sweep"
    cell = sweep / "c" / "linear" / "1shot" / "seed1"
    cell.mkdir(parents=True)
    (cell / ".main-step-00000001.safetensors.a1b2.tmp").write_bytes(b"half a checkpoint")
    holder = _popen(["-c", HOLD_LOCK, cell], stdin=subprocess.PIPE)
    # the holder dies (a crash: the kernel releases the lock) while the sweep waits for the cell
    other = sweep / "c" / "linear" / "1shot" / "seed2" / "final.json"

    def kill_after_the_other_cell() -> None:
        for _ in range(1200):
            if other.exists():
                break
            time.sleep(0.1)
        time.sleep(3)
        holder.send_signal(signal.SIGKILL)

    killer = threading.Thread(target=kill_after_the_other_cell, daemon=True)
    try:
        _wait_for_lock(cell, holder)
        args = ["sweep", "--methods", "linear", "--datasets", f"c={colors}", "--shots", 1, "--seeds", "1,2",
                *TINY_BACKBONE, "--epochs", 1, "--batch-size", 4, "--out", sweep]
        killer.start()
        assert lore_cli(*args) == 0  # never recorded as failed: waited for, then run here
        err = capsys.readouterr().err
        assert "waiting for 1 cell(s) held by other processes" in err, err
        runs = json.loads((sweep / "table.json").read_text())["cells"][0]["runs"]
        assert [r["status"] for r in runs] == ["done", "done"]
    finally:
        holder.kill()
        holder.wait(timeout=60)
    assert not list(cell.glob("*.tmp")) and (cell / "final.json").is_file()  # its dead writer's temporary is gone


# ============================================================================ issue 15, item 2
# A last batch of one image is folded into the batch before it.

@pytest.mark.parametrize("n,batch,world,sizes", [(13, 4, 1, [4, 4, 5]), (9, 4, 1, [4, 5]), (12, 4, 1, [4, 4, 4]),
                                                 (14, 4, 1, [4, 4, 4, 2]), (13, 4, 2, [4, 4, 5]),
                                                 (15, 4, 2, [4, 4, 7]), (3, 4, 1, [3]), (1, 1, 1, [])])
def test_last_batch_of_one_is_folded(n, batch, world, sizes):
    from lore.data.sampling import EpochBatchSampler

    ranks = [EpochBatchSampler(n, batch, 7, 3, rank, world) for rank in range(world)]
    assert ranks[0].steps() == len(sizes)
    assert [ranks[0].global_batch(s) for s in range(len(sizes))] == sizes
    per_rank = [list(r) for r in ranks]
    for step, size in enumerate(sizes):
        shares = [len(b[step]) for b in per_rank]
        assert sum(shares) == size and min(shares) >= 2  # BatchNorm never sees one image
    seen = sorted(i for b in per_rank for batch_ in b for i, _ in batch_)
    assert seen == (list(range(n)) if sizes else [])  # every image every epoch
    # a resumed epoch continues with exactly the batches the uninterrupted one had left
    for rank, full in zip(range(world), per_rank):
        assert list(EpochBatchSampler(n, batch, 7, 3, rank, world, start_step=1)) == full[1:]


def test_lore_trains_when_the_last_batch_holds_one_image(colors, knowledge_file, tmp_path):
    # 4 classes x 1 shot at batch 3: batches of 3 and 1 -> one batch of 4 (BatchNorm crashed before)
    out = tmp_path / "run"
    assert lore_cli("train", "--method", "lore", "--wb-norm", "batch", *TINY_BACKBONE, "--data", colors, "--out", out, "--shots", 1,
                    "--knowledge", f"file:{_knowledge_rows({'base': tmp_path}, 4)}", "--batch-size", 3,
                    "--epochs", 2) == 0
    assert [json.loads(ln)["epoch"] for ln in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_sweep_marks_a_failing_cell_and_goes_on(colors, tmp_path, capsys):
    k = _knowledge_rows({"base": tmp_path}, 4)
    code = lore_cli("sweep", "--methods", "lore,linear", "--datasets", f"c={colors}", "--shots", 1, "--seeds", 1,
                    *TINY_BACKBONE, "--epochs", 1, "--batch-size", 1, "--wb-norm", "batch", "--knowledge", f"file:{k}",
                    "--out", tmp_path / "sweep")
    assert code == 2
    table = json.loads((tmp_path / "sweep" / "table.json").read_text())
    status = {r["method"]: r["runs"][0]["status"] for r in table["cells"]}
    assert status == {"lore": "failed", "linear": "done"}
    assert "--batch-size 1" in table["failed"][0]["error"]


# ============================================================================ issue 15, item 5 and 6


def test_run_stores_absolute_paths_and_eval_elsewhere_reads_them(colors, tmp_path, monkeypatch, capsys):
    import yaml

    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    shutil.copytree(colors, work / "data")
    _copy_renamed({"colors": colors, "base": elsewhere})  # another data/ with other classes
    (elsewhere / "renamed").rename(elsewhere / "data")
    monkeypatch.chdir(work)
    assert lore_cli(*TRAIN, "--data", "data", "--out", "run") == 0
    saved = yaml.safe_load((work / "run" / "config.yaml").read_text())
    assert saved["data"] == str(work / "data") and saved["out"] == str(work / "run")
    assert json.loads((work / "run" / "model.json").read_text())["data"] == str(work / "data")
    expected = json.loads((work / "run" / "final.json").read_text())["test_acc1"]
    monkeypatch.chdir(elsewhere)
    assert lore_cli("eval", "--run", work / "run", "--workers", 0) == 0
    result = json.loads((work / "run" / "eval_test.json").read_text())
    assert result["data"] == str(work / "data") and result["acc1"] == pytest.approx(expected)
    # the other folder's data, asked for explicitly, are refused by their class list
    assert lore_cli("eval", "--run", work / "run", "--data", "data", "--workers", 0) == 2
    assert "do not match" in capsys.readouterr().err


def test_rejected_sweep_rerun_leaves_the_finished_table(colors, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    args = ["sweep", "--methods", "linear", "--datasets", f"c={colors}", "--shots", 1, "--seeds", 1,
            *TINY_BACKBONE, "--epochs", 1, "--batch-size", 4, "--out", sweep]
    assert lore_cli(*args) == 0
    before = _snapshot(sweep)
    assert lore_cli(*args, "--lr", "0.01") == 2
    assert "was run with other options (lr: 0.003 there, 0.01 now)" in capsys.readouterr().err
    assert _snapshot(sweep) == before
    assert lore_cli(*args) == 0  # the same options again: the finished cell is kept


# ============================================================================ issue 15, items 7 and 8


def test_yaml_values_are_read_as_meant(colors, tmp_path):
    import yaml

    cfg = tmp_path / "c.yaml"
    cfg.write_text('lr: 1e-3\nmin_lr: 1e-5\nkp: "no"\nepochs: 1.0\nwd: 0\n')
    out = tmp_path / "run"
    assert lore_cli(*TRAIN_NO_EPOCHS, "--data", colors, "--config", cfg, "--out", out) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["lr"] == 1e-3 and saved["min_lr"] == 1e-5 and saved["kp"] is False
    assert saved["epochs"] == 1 and isinstance(saved["epochs"], int) and saved["wd"] == 0.0


def test_default_workers_do_not_exceed_the_cores():
    import os

    from lore.config import TrainConfig
    from lore.values import default_workers

    assert TrainConfig().workers == default_workers() == min(4, len(os.sched_getaffinity(0)))


def test_disk_full_while_saving_names_the_file_and_keeps_the_previous(tmp_path):
    import errno

    from lore.errors import LoreError
    from lore.io import atomic_save

    target = tmp_path / "checkpoints" / "main-step-00000004.safetensors"
    target.parent.mkdir()
    target.write_bytes(b"previous")

    def full(tmp: str) -> None:
        Path(tmp).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(LoreError, match=r"main-step-00000004\.safetensors: No space left.*intact"):
        atomic_save(target, full)
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]  # no temporary left


def test_checkpoints_are_readable_by_others(tmp_path):
    import os

    from safetensors.torch import save_file
    import torch

    from lore.io import atomic_save

    umask = os.umask(0o022)
    try:
        path = atomic_save(tmp_path / "c.safetensors", lambda tmp: save_file({"x": torch.zeros(2)}, tmp))
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_valid_ground_truth_pickles_load_in_every_protocol(protocol, tmp_path):
    import pickle

    from lore.io import load_pickle_safe

    value = {"imlist": ["a", "b"], "gnd": [{"easy": np.array([], np.int64), "hard": np.arange(3),
                                            "junk": np.zeros((0, 4)), "bbx": np.array([1.5, 2.0, 3.0, 4.0])}]}
    f = tmp_path / "gnd.pkl"
    f.write_bytes(pickle.dumps(value, protocol=protocol))
    loaded = load_pickle_safe(f)
    for key, arr in value["gnd"][0].items():
        assert np.array_equal(loaded["gnd"][0][key], arr) and loaded["gnd"][0][key].dtype == arr.dtype
    assert loaded["imlist"] == ["a", "b"]


def test_unpickler_refuses_expansion_bombs_quickly(tmp_path):
    import pickle
    import time

    from lore.errors import LoreError
    from lore.io import load_pickle_safe

    leaf: list = [0]
    for _ in range(40):
        leaf = [leaf, leaf]
    f = tmp_path / "bomb.pkl"
    f.write_bytes(pickle.dumps({"gnd": leaf}, protocol=2))
    assert f.stat().st_size < 1000
    start = time.process_time()
    with pytest.raises(LoreError, match="expands to more than"):
        load_pickle_safe(f)
    assert time.process_time() - start < 5
    cyclic: list = []
    cyclic.append(cyclic)
    f.write_bytes(pickle.dumps(cyclic))
    with pytest.raises(LoreError, match="expands to more than"):
        load_pickle_safe(f)
    f.write_bytes(b"\x80\x02c__builtin__\nbytes\nJ\x00\x00\x00\x40\x85R.")  # bytes(2**30)
    with pytest.raises(LoreError, match="refused"):
        load_pickle_safe(f)


def test_holdout_split_hashes_class_and_name(tmp_path):
    from lore.data import load_dataset

    for c in ("a", "b", "c", "d"):
        for i in range(10):
            (tmp_path / c).mkdir(exist_ok=True)
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / c / f"{i}.png")
    test = load_dataset(str(tmp_path), holdout=0.3).splits["test"]
    held = {c: sorted(Path(p).name for p, y in test if y == k) for k, c in enumerate("abcd")}
    assert len({tuple(v) for v in held.values()}) > 1  # not the same file names in every class


def test_corrupt_test_image_is_found_before_training(colors, tmp_path, capsys):
    root = shutil.copytree(colors, tmp_path / "data")
    _garbage(root / "test" / "blue" / "broken.png")
    out = tmp_path / "run"
    assert lore_cli(*TRAIN, "--data", root, "--out", out) == 2
    err = capsys.readouterr().err
    assert "cannot decode test image" in err and "broken.png" in err
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists()


def test_a_run_that_fails_before_producing_anything_leaves_no_folder(colors, tmp_path):
    out = tmp_path / "run"
    assert lore_cli(*TRAIN, "--data", colors, "--out", out, "--method", "lore", "--knowledge", "file:nope.npy") == 2
    assert not out.exists()
    out.mkdir()  # a folder the user made is left as it was
    assert lore_cli(*TRAIN, "--data", colors, "--out", out, "--method", "lore", "--knowledge", "file:nope.npy") == 2
    assert out.is_dir()


def test_offline_pretrained_fails_without_network_attempts_and_leaves_nothing(colors, tmp_path, monkeypatch,
                                                                               capsys):
    import socket

    from huggingface_hub import constants

    import lore.network as network

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))  # nothing cached
    for name in network.PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(network, "_reachable", lambda host, port, timeout: False)  # the quick probe says no

    def no_network(*args, **kwargs):
        raise AssertionError("a network connection was attempted after the hub was found unreachable")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    out = tmp_path / "run"
    code = lore_cli("train", "--method", "linear", "--backbone", "vit_tiny_patch16_224", "--pretrained",
                    "--data", colors, "--out", out, "--img-size", 32, "--epochs", 1, "--workers", 0)
    err = capsys.readouterr().err
    assert code == 2 and "could not fetch pre-trained weights" in err, err[-2000:]
    assert constants.HF_HUB_OFFLINE is True
    assert not out.exists()  # no folder holding only config.yaml


def test_option_values_are_converted_or_refused_with_the_option_named():
    from lore.config import make
    from lore.errors import LoreError

    cfg = make({"epochs": "1e1", "kp": "off", "lr": "1e-3", "template": 2024, "shots": None, "wd": 0})
    assert (cfg.epochs, cfg.kp, cfg.lr, cfg.template, cfg.shots, cfg.wd) == (10, False, 1e-3, "2024", None, 0.0)
    assert isinstance(cfg.wd, float)
    for values, text in (({"epochs": None}, "--epochs needs a value"), ({"kp": "maybe"}, "--kp must be true or false"),
                         ({"momentum": 1.0}, "--momentum must be in [0, 1)"), ({"lr": "inf"}, "--lr must be a finite"),
                         ({"epochs": True}, "--epochs must be"), ({"backbone": ["x"]}, "--backbone must be text"),
                         ({"batch_size": 2.5}, "--batch-size must be a whole number")):
        with pytest.raises(LoreError, match=text.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
            make(values, source="c.yaml")


def test_sweep_goes_on_after_a_cell_crashes_with_any_error(colors, tmp_path, monkeypatch):
    import lore.train

    def fake_run(cfg):
        if cfg.method == "lore":
            raise RuntimeError("Expected more than 1 value per channel when training")
        return {"test_acc1": 0.5}

    monkeypatch.setattr(lore.train, "run", fake_run)
    code = lore_cli("sweep", "--methods", "lore,linear", "--datasets", f"c={colors}", "--shots", 1, "--seeds", "1,2",
                    *TINY_BACKBONE, "--epochs", 1, "--out", tmp_path / "sweep")
    assert code == 2
    table = json.loads((tmp_path / "sweep" / "table.json").read_text())
    status = {(r["method"], run["seed"]): run["status"] for r in table["cells"] for run in r["runs"]}
    assert status == {("lore", 1): "failed", ("lore", 2): "failed", ("linear", 1): "done", ("linear", 2): "done"}
    assert "Expected more than 1 value" in table["failed"][0]["error"]


def test_a_class_without_training_images_is_an_error_unless_allowed(colors, tmp_path, capsys):
    root = tmp_path / "csvdata"
    root.mkdir()
    train = [p for c in ("red", "green") for p in sorted((colors / "train" / c).iterdir())]
    test = [p for c in ("red", "green", "blue") for p in sorted((colors / "test" / c).iterdir())]
    (root / "train.csv").write_text("path,label\n" + "".join(f"{p},{p.parent.name}\n" for p in train))
    (root / "test.csv").write_text("path,label\n" + "".join(f"{p},{p.parent.name}\n" for p in test))
    assert lore_cli(*TRAIN, "--data", root, "--format", "csv", "--out", tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert "class 'blue' (label 0) has no image in the train split" in err and "--allow-missing-classes" in err
    assert lore_cli(*TRAIN, "--data", root, "--format", "csv", "--out", tmp_path / "run",
                    "--allow-missing-classes") == 0
    assert "warning:" in capsys.readouterr().err


def test_training_to_a_log_file_prints_plain_progress_lines(colors, tmp_path, monkeypatch, capsys):
    # under pytest stderr is not a terminal, so the bar is hidden, as when output goes to a file
    monkeypatch.setenv("LORE_PROGRESS_SECONDS", "0")
    assert lore_cli(*TRAIN, "--data", colors, "--out", tmp_path / "run") == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("main epoch 1/1 step ")]
    assert lines and "\r" not in err
    steps = [int(line.split()[4].split("/")[0]) for line in lines]
    assert steps == [1, 2, 3, 4, 5, 6]  # one line per step at interval 0 (6 batches of 8)
    assert all(" loss " in line and " lr " in line for line in lines)


# --- CoOp split files: labels bounded before anything is built, paths kept inside the root --------

def _coop_file(tmp_path: Path, entries: dict) -> Path:
    """A CoOp split file as Zhou et al. distribute it: {"train"|"val"|"test": [[impath, label, classname]]}
    with image paths relative to the folder the images live in."""
    (tmp_path / "data" / "images").mkdir(parents=True, exist_ok=True)
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "data" / "images" / name)
    (tmp_path / "outside").mkdir(exist_ok=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "outside" / "secret.png")
    path = tmp_path / "data" / "split_zhou_Mine.json"
    path.write_text(json.dumps(entries))
    return path


@pytest.mark.parametrize("bad, message", [
    ({"train": [["images/a.png", 10 ** 30, "x"]]}, "has label 1000000000000000000000000000000"),
    ({"train": [["images/a.png", -1, "x"]]}, "has label -1"),
    ({"train": [["images/a.png", "0", "x"]]}, "has label '0'"),
    ({"train": [["images/a.png", 0, "x"]], "test": [["../outside/secret.png", 0, "x"]]}, "leads outside"),
    ({"train": [["images/a.png", 0, "x"]], "test": [[None, 0, "x"]]}, "entries must be"),
])
def test_coop_split_refuses_huge_labels_and_escaping_paths(tmp_path, bad, message):
    from lore.data.datasets import load_dataset
    from lore.errors import LoreError

    path = _coop_file(tmp_path, bad)
    with pytest.raises(LoreError, match=message) as info:
        load_dataset(str(path), "coop-split")
    assert "split_zhou_Mine.json" in str(info.value) and "\n" not in str(info.value)


def test_coop_split_absolute_paths_are_refused_and_good_files_load(tmp_path):
    from lore.data.datasets import load_dataset
    from lore.errors import LoreError

    secret = str(tmp_path / "outside" / "secret.png")
    path = _coop_file(tmp_path, {"train": [["images/a.png", 0, "x"]], "test": [[secret, 1, "y"]]})
    with pytest.raises(LoreError, match=r"\(test entry 0\).*not a name inside"):
        load_dataset(str(path), "coop-split")
    path.write_text(json.dumps({"train": [["images/a.png", 0, "x"]], "test": [["images/b.png", 1, "y"]]}))
    data = load_dataset(str(path), "coop-split")
    assert data.classnames == ["x", "y"] and len(data.get("test")) == 1
