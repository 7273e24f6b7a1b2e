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
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


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
}


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
