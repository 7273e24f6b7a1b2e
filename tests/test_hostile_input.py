"""Hostile and careless input, round three: memory bombs, writes outside --out, tables rewritten
before a refusal, disk-full checkpoints, one bad dataset in a table, and malformed files of every
kind: each one clear error line (exit 2), nothing written, nothing lost."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY, TINY_BACKBONE, lore_cli

TRAIN = ["train", *TINY_BACKBONE, "--method", "linear", "--shots", "2", "--epochs", "1", "--batch-size", "4",
         "--device", "cpu"]


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("lore: error: "), err
    assert "Traceback" not in err, err
    return lines[-1]


# ------------------------------------------------------------------------------------------------
# 1. memory bombs: refused before anything is built, under a memory limit


BOMB_RUNNER = textwrap.dedent("""
    import resource, sys
    import lore.data.datasets, lore.io  # imports first: the limit is on what the reader builds
    vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + 768 * 2**20, vm + 768 * 2**20))
    from lore.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def run_limited(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BOMB_RUNNER, *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def test_coop_split_with_a_huge_label_is_refused_under_a_memory_limit(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "split_zhou_X.json").write_text(json.dumps({"train": [["a.jpg", 10**30, "a"]],
                                                            "test": [["a.jpg", 0, "a"]]}))
    for fmt in ("coop-split",):
        done = run_limited("train", "--data", tmp_path, "--format", fmt, "--out", tmp_path / "run")
        assert done.returncode == 2 and "labels must be integers" in one_error_line(done.stderr)


@pytest.mark.parametrize("fmt", ["vpt-json", "csv"])
def test_vpt_json_and_csv_with_a_huge_label_are_refused(tmp_path: Path, fmt: str) -> None:
    if fmt == "vpt-json":
        (tmp_path / "train.json").write_text(json.dumps({"a.jpg": 10**30}))
        (tmp_path / "test.json").write_text(json.dumps({"a.jpg": 0}))
    else:
        (tmp_path / "train.csv").write_text("path,label\na.jpg," + "9" * 40 + "\n")
        (tmp_path / "test.csv").write_text("path,label\na.jpg,0\n")
    done = run_limited("train", "--data", tmp_path, "--format", fmt, "--out", tmp_path / "run")
    assert done.returncode == 2 and "label" in one_error_line(done.stderr)


class _ObjectArrayBomb:
    """A few hundred bytes that ask numpy for an object array of 2e8 elements."""

    def __reduce__(self):
        from numpy._core.multiarray import _reconstruct

        return (_reconstruct, (np.ndarray, (0,), b"b"),
                (1, (200_000_000,), np.dtype("O"), False, [None]))


def test_cifar_batch_bomb_is_refused_before_numpy_allocates(tmp_path: Path, monkeypatch) -> None:
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    bomb = pickle.dumps({b"data": _ObjectArrayBomb(), b"labels": [0]}, protocol=2)
    assert len(bomb) < 400
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (base / name).write_bytes(bomb)
    (base / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"c%d" % i for i in range(10)]}, protocol=2))
    done = run_limited("data", "check", "cifar10", "--root", base)
    assert done.returncode == 2 and "200,000,000" in one_error_line(done.stderr).replace("(200000000,)", "200,000,000")


# ------------------------------------------------------------------------------------------------
# 3. writes outside --out, lost outputs


def test_a_lock_that_is_a_symlink_is_refused_and_its_target_untouched(colors: Path, tmp_path: Path, capsys) -> None:
    target = tmp_path / "outside.txt"
    target.write_text("precious")
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").symlink_to(target)
    assert lore_cli(*TRAIN, "--data", colors, "--out", out) == 2
    assert "symbolic link" in one_error_line(capsys.readouterr().err) and target.read_text() == "precious"


def test_a_stray_metrics_file_in_a_fresh_out_is_refused_before_training(colors: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text("not json\n")
    assert lore_cli(*TRAIN, "--data", colors, "--out", out) == 2
    assert "metrics.jsonl" in one_error_line(capsys.readouterr().err)
    assert (out / "metrics.jsonl").read_text() == "not json\n" and not (out / "final.json").exists()


def test_sweep_merge_never_replaces_a_table(colors: Path, tmp_path: Path, capsys) -> None:
    a = tmp_path / "a"
    assert lore_cli("sweep", "--methods", "linear", "--datasets", f"colors={colors}", "--shots", 2, "--seeds", 1,
                    "--epochs", 1, "--batch-size", 4, *TINY_BACKBONE, "--device", "cpu", "--out", a) == 0
    before = (a / "table.json").read_bytes()
    capsys.readouterr()
    assert lore_cli("sweep", "merge", a, "--out", a) == 2
    assert "already holds a table.json" in one_error_line(capsys.readouterr().err)
    assert (a / "table.json").read_bytes() == before


def test_paper_rerun_with_a_changed_option_refuses_before_rewriting_the_table(tmp_path: Path, capsys) -> None:
    from lore.synthetic.paper_datasets import write_paper_datasets

    root, out = tmp_path / "fake", tmp_path / "t5"
    write_paper_datasets(root, ["dtd"])
    argv = ["paper", "table5", "--data-root", root, "--out", out, "--datasets", "dtd", "--methods", "lore",
            "--backbone", "vit_small_patch16_224", "--no-pretrained", "--backbone-args",
            TINY, "--img-size", 32, "--workers", 0,
            "--device", "cpu", "--epochs", 1, "--batch-size", 8, "--shots-cap", 1, "--knowledge", "ngram:16"]
    assert lore_cli(*argv) == 0
    tables = {f: (out / f).read_bytes() for f in ("table.md", "table.csv", "table.json")}
    capsys.readouterr()
    assert lore_cli(*argv, "--lr", "0.01") == 2
    assert "other options" in one_error_line(capsys.readouterr().err)
    assert {f: (out / f).read_bytes() for f in tables} == tables


def test_one_broken_dataset_does_not_end_a_paper_table(tmp_path: Path, monkeypatch, capsys) -> None:
    """A reader's unexpected exception marks that dataset's cells failed; the others run, table.md
    is written, the exit status says a cell failed."""
    from lore.data import catalog
    from lore.synthetic.paper_datasets import write_paper_datasets

    root, out = tmp_path / "fake", tmp_path / "t5"
    write_paper_datasets(root, ["dtd", "cifar10"])
    real = catalog.load_paper_dataset

    def flaky(name, *a, **kw):
        if name == "cifar10":
            raise ValueError("a reader bug")
        return real(name, *a, **kw)

    monkeypatch.setattr(catalog, "load_paper_dataset", flaky)
    import lore.train as train_mod
    monkeypatch.setattr(train_mod, "load_paper_dataset", flaky)
    argv = ["paper", "table5", "--data-root", root, "--out", out, "--datasets", "dtd,cifar10", "--methods",
            "lore", "--backbone", "vit_small_patch16_224", "--no-pretrained", "--backbone-args",
            TINY, "--img-size", 32, "--workers", 0,
            "--device", "cpu", "--epochs", 1, "--batch-size", 8, "--shots-cap", 1, "--knowledge", "ngram:16"]
    assert lore_cli(*argv) == 2
    assert "a reader bug" in capsys.readouterr().err
    runs = json.loads((out / "table.json").read_text())["runs"]
    assert {(r["dataset"], r["status"]) for r in runs} == {("dtd", "done"), ("cifar10", "failed")}
    assert (out / "table.md").is_file()


def test_paper_names_a_dataset_or_shot_count_the_table_does_not_have(tmp_path: Path, capsys) -> None:
    for extra, name in ((["--datasets", "dtd,dtdd"], "--datasets dtdd"), (["--shots", "3"], "--shots 3")):
        assert lore_cli("paper", "table5", "--data-root", tmp_path, "--out", tmp_path / "o", "--plan",
                        "--no-measure", *extra) == 2
        assert name in one_error_line(capsys.readouterr().err)


# ------------------------------------------------------------------------------------------------
# 5. promised one-line errors


def test_disk_full_while_saving_a_checkpoint_is_one_line_and_keeps_the_last(colors: Path, tmp_path: Path,
                                                                            monkeypatch, capsys) -> None:
    import safetensors
    import lore.checkpoint as ckpt

    real, calls = ckpt.save_file, []

    def full(tensors, path, *a, **kw):
        calls.append(path)
        if len(calls) > 1:  # the first epoch's checkpoint lands, the second finds the disk full
            raise safetensors.SafetensorError("Error while serializing: IoError(No space left on device)")
        return real(tensors, path, *a, **kw)

    monkeypatch.setattr(ckpt, "save_file", full)
    out = tmp_path / "run"
    assert lore_cli(*[a if a != "1" else "2" for a in TRAIN], "--data", colors, "--out", out) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "cannot write" in line and "No space left" in line
    kept = sorted((out / "checkpoints").glob("*.safetensors"))
    assert len(kept) == 1 and not list((out / "checkpoints").glob(".*.tmp"))


def test_demo_options_are_checked_before_any_training(tmp_path: Path, capsys) -> None:
    for bad, message in ((["--lore-set", "out=/x"], "the demo sets out itself"),
                         (["--lore-set", "bn_mode=wrong"], "--bn-mode 'wrong'"),
                         (["--lore-set", "nonsense=1"], "not a `lore train` option"),
                         (["--lrs", "0.1,inf"], "--lrs")):
        assert lore_cli("demo", "--out", tmp_path / "demo", *bad) == 2
        assert message in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "demo").exists()


def test_attention_and_locality_read_a_paper_dataset_run_as_it_was_trained(tmp_path: Path) -> None:
    from lore.synthetic.paper_datasets import write_paper_datasets

    root = write_paper_datasets(tmp_path / "fake", ["dtd"])["dtd"]
    run = tmp_path / "run"
    assert lore_cli("train", *TINY_BACKBONE, "--method", "lore", "--knowledge", "ngram:16", "--dataset", "dtd",
                    "--data", root, "--shots", 1, "--epochs", 1, "--batch-size", 8, "--out", run) == 0
    assert lore_cli("attention", "--run", run, "--out", tmp_path / "att.png", "--n", 2) == 0
    info = json.loads((tmp_path / "att.json").read_text())
    assert all(Path(p).is_relative_to(root) for p in info["images"])
    assert lore_cli("locality", "--run", run, "--out", tmp_path / "loc.json", "--n", 2) == 0


# ------------------------------------------------------------------------------------------------
# 6. malformed files: exit 2, one line, no traceback, nothing written


def _cifar(tmp: Path, batch: dict | None = None, meta: dict | None = None) -> list:
    base = tmp / "cifar-10-batches-py"
    base.mkdir()
    good = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (base / name).write_bytes(pickle.dumps(batch if batch is not None else good, protocol=2))
    (base / "batches.meta").write_bytes(pickle.dumps(meta or {b"label_names": [b"c%d" % i for i in range(10)]},
                                                     protocol=2))
    return ["data", "check", "cifar10", "--root", base]


def _coop(tmp: Path, text: str) -> list:
    (tmp / "split_zhou_X.json").write_text(text)
    return [*TRAIN, "--data", tmp, "--format", "coop-split", "--out", tmp / "run"]


def _dtd_bytes(tmp: Path) -> list:
    base = tmp / "dtd"
    (base / "labels").mkdir(parents=True)
    (base / "images").mkdir()
    for f in ("train1.txt", "val1.txt", "test1.txt"):
        (base / "labels" / f).write_bytes(b"banded/\xff\xfe.jpg\n")
    return ["data", "check", "dtd", "--root", base]


def _dogs_mat(tmp: Path, content: bytes) -> list:
    (tmp / "Images").mkdir()
    for s in ("train", "test"):
        (tmp / f"{s}_list.mat").write_bytes(content)
    return ["data", "check", "dogs", "--root", tmp]


def _config(tmp: Path, text: str) -> list:
    (tmp / "c.yaml").write_text(text)
    return [*TRAIN, "--config", tmp / "c.yaml", "--data", tmp, "--out", tmp / "run"]


def _merge(tmp: Path, table) -> list:
    (tmp / "s").mkdir()
    (tmp / "s" / "table.json").write_text(json.dumps(table))
    return ["sweep", "merge", tmp / "s", "--out", tmp / "merged"]


def _model_json(tmp: Path, colors: Path) -> list:
    run = tmp / "run"
    assert lore_cli(*TRAIN, "--data", colors, "--out", run) == 0
    meta = json.loads((run / "model.json").read_text())
    (run / "model.json").write_text(json.dumps({**meta, "method": ["x"]}))
    return ["eval", "--run", run, "--out", tmp / "ev"]


def _imagenet(tmp: Path, *, csv_text: bytes | None = None, meta: bytes | dict | None = None,
              truth: str = "1\n", val_name: str = "ILSVRC2012_val_00000001.JPEG") -> list:
    from PIL import Image
    from scipy.io import savemat

    root = tmp / "imagenet"
    (root / "train" / "n01440764").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "train" / "n01440764" / "a.JPEG")
    (root / "val").mkdir()
    Image.new("RGB", (8, 8)).save(root / "val" / val_name)
    if csv_text is not None:
        (root / "LOC_val_solution.csv").write_bytes(csv_text)
    else:
        devkit = root / "ILSVRC2012_devkit_t12" / "data"
        devkit.mkdir(parents=True)
        (devkit / "ILSVRC2012_validation_ground_truth.txt").write_text(truth)
        if isinstance(meta, bytes):
            (devkit / "meta.mat").write_bytes(meta)
        else:
            savemat(devkit / "meta.mat", meta or {"other": np.zeros(1)})
    return ["data", "check", "imagenet", "--root", root]


def _aircraft_bytes(tmp: Path) -> list:
    data = tmp / "fgvc-aircraft-2013b" / "data"
    data.mkdir(parents=True)
    (data / "variants.txt").write_bytes(b"707-320\n\xff\n")
    return ["data", "check", "aircraft", "--root", tmp]


def _bench(tmp: Path, report) -> list:
    (tmp / "bench.json").write_text(report if isinstance(report, str) else json.dumps(report))
    return ["paper", "table5", "--data-root", tmp, "--out", tmp / "o", "--plan", "--no-measure", "--bench",
            tmp / "bench.json"]


DEEP = "[" * 100_000 + "]" * 100_000
MALFORMED = {
    "cifar label is text": lambda t, c: _cifar(t, {b"data": np.zeros((2, 3072), np.uint8), b"labels": ["a", "b"]}),
    "cifar label is huge": lambda t, c: _cifar(t, {b"data": np.zeros((2, 3072), np.uint8), b"labels": [10**30, 1]}),
    "cifar label is a float": lambda t, c: _cifar(t, {b"data": np.zeros((2, 3072), np.uint8), b"labels": [1.7, 1]}),
    "cifar data is not an array": lambda t, c: _cifar(t, {b"data": [1, 2], b"labels": [0, 1]}),
    "cifar data is float": lambda t, c: _cifar(t, {b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}),
    "cifar label_names not a list": lambda t, c: _cifar(t, meta={b"label_names": b"airplane"}),
    "dtd list not utf-8": lambda t, c: _dtd_bytes(t),
    "dogs mat is empty": lambda t, c: _dogs_mat(t, b""),
    "dogs mat is text": lambda t, c: _dogs_mat(t, b"file_list = 3\n"),
    "dogs mat is v7.3 hdf5": lambda t, c: _dogs_mat(t, b"MATLAB 7.3 MAT-file" + b" " * 108 + b"\x00\x02IM" + b"\x89HDF" * 64),
    "coop label 1e999": lambda t, c: _coop(t, '{"train": [["a.jpg", 1e999, "a"]]}'),
    "coop label NaN": lambda t, c: _coop(t, '{"train": [["a.jpg", NaN, "a"]]}'),
    "coop label text": lambda t, c: _coop(t, '{"train": [["a.jpg", "zero", "a"]]}'),
    "coop label list": lambda t, c: _coop(t, '{"train": [["a.jpg", [1], "a"]]}'),
    "coop split not a list": lambda t, c: _coop(t, '{"train": {"a.jpg": 0}}'),
    "coop impath a number": lambda t, c: _coop(t, '{"train": [[5, 0, "a"]]}'),
    "coop impath null": lambda t, c: _coop(t, '{"train": [[null, 0, "a"]]}'),
    "coop json not utf-8": lambda t, c: _coop(t, '{"train": [["\udcff", 0, "a"]]}'.encode("utf-8", "surrogateescape").decode("latin1")),
    "coop json nested 100000 deep": lambda t, c: _coop(t, '{"train": ' + DEEP + "}"),
    "config nested deep": lambda t, c: _config(t, "lr: " + "[" * 3000 + "]" * 3000),
    "config lr of 370 digits": lambda t, c: _config(t, "lr: " + "9" * 370 + "\n"),
    "config data is binary": lambda t, c: _config(t, "data: !!binary aGVsbG8=\n"),
    "sweep table is a list": lambda t, c: _merge(t, [1, 2]),
    "sweep table lacks keys": lambda t, c: _merge(t, {"methods": ["lore"]}),
    "model.json method is a list": lambda t, c: _model_json(t, c),
    "imagenet LOC csv short rows": lambda t, c: _imagenet(t, csv_text=b"ImageId,PredictionString\nILSVRC2012_val_00000001\n"),
    "imagenet LOC csv not utf-8": lambda t, c: _imagenet(t, csv_text=b"ImageId,PredictionString\n\xff\xfe,x\n"),
    "imagenet meta.mat without synsets": lambda t, c: _imagenet(t),
    "imagenet meta.mat empty": lambda t, c: _imagenet(t, meta=b""),
    "imagenet val file without a number": lambda t, c: _imagenet(t, val_name="ILSVRC2012_val_last.JPEG"),
    "aircraft variants not utf-8": lambda t, c: _aircraft_bytes(t),
    "bench rates of the wrong type": lambda t, c: _bench(t, {"methods": {"lore": {"train_images_per_s": "fast"}}}),
    "bench rate negative": lambda t, c: _bench(t, {"methods": {"lore": {"infer_images_per_s": -5}}}),
    "bench nested deep": lambda t, c: _bench(t, DEEP),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_file_is_one_error_line(case: str, colors: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    work = tmp_path / "work"
    work.mkdir()
    argv = MALFORMED[case](work, colors)
    capsys.readouterr()
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert lore_cli(*argv) == 2
    one_error_line(capsys.readouterr().err)
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert after == before, set(after) - set(before)  # nothing written (no run, no cache, no table)


# ------------------------------------------------------------------------------------------------
# should-fix: duplicates, leaks, scoring trained images


def test_a_duplicate_line_or_a_test_image_in_the_train_list_is_refused(colors: Path, tmp_path: Path, capsys) -> None:
    train = sorted(str(p) for p in (colors / "train").rglob("*.png"))
    test = sorted(str(p) for p in (colors / "test").rglob("*.png"))
    for name, rows in (("duplicate", train + train[:1]), ("leak", train + test[:1])):
        root = tmp_path / name
        root.mkdir()
        (root / "train.csv").write_text("path,label\n" + "".join(f"{p},{Path(p).parent.name}\n" for p in rows))
        (root / "test.csv").write_text("path,label\n" + "".join(f"{p},{Path(p).parent.name}\n" for p in test))
        assert lore_cli(*TRAIN, "--data", root, "--format", "csv", "--out", tmp_path / f"run-{name}") == 2
        line = one_error_line(capsys.readouterr().err)
        assert ("listed twice in the train split" if name == "duplicate" else "in both the train and the test") in line


def test_eval_on_val_warns_when_the_run_trained_on_those_images(tmp_path: Path, capsys) -> None:
    """A paper dataset's pool is train + val: `eval --split val` then scores trained images."""
    from lore.synthetic.paper_datasets import write_paper_datasets

    root = write_paper_datasets(tmp_path / "fake", ["dtd"])["dtd"]  # 1 train + 1 val image per class
    run = tmp_path / "run"
    assert lore_cli("train", *TINY_BACKBONE, "--method", "linear", "--dataset", "dtd", "--data", root, "--shots", 2,
                    "--epochs", 1, "--batch-size", 8, "--device", "cpu", "--out", run) == 0
    capsys.readouterr()
    assert lore_cli("eval", "--run", run, "--split", "val", "--workers", 0, "--out", tmp_path / "ev") == 0
    assert "47 of the 47 val images were among the run's training shots" in capsys.readouterr().err
    assert lore_cli("eval", "--run", run, "--split", "test", "--workers", 0, "--out", tmp_path / "ev") == 0
    assert "warning" not in capsys.readouterr().err


def test_messages_name_the_right_thing(tmp_path: Path, capsys) -> None:
    assert lore_cli("train", "--bogus") == 2
    assert one_error_line(capsys.readouterr().err).startswith("lore: error: unrecognized arguments")  # not "lore: lore:"
    assert lore_cli(*TRAIN, "--method", "prograd", "--prograd-lambda", "-1", "--data", tmp_path, "--out", tmp_path / "r") == 2
    assert "--prograd-lambda must be >= 0" in one_error_line(capsys.readouterr().err)
    half = tmp_path / "half"  # a run still training: config.yaml written, model.json not yet
    half.mkdir()
    (half / "config.yaml").write_text("method: linear\n")
    assert lore_cli("eval", "--run", half) == 2
    assert "still training or stopped before it finished" in one_error_line(capsys.readouterr().err)
    wheel = tmp_path / "elpv_dataset-1.0-py3-none-any.whl"  # the user's own (broken) file: not to be deleted
    wheel.write_text("not a zip")
    assert lore_cli("demo", "--elpv", wheel, "--out", tmp_path / "demo") == 2
    line = one_error_line(capsys.readouterr().err)
    assert "replace it with a good copy" in line and "delete" not in line and wheel.exists()


# ------------------------------------------------------------------------------------------------
# round four: no silent wrong result (test split, warm-up, contradicting rows, folder names,
# failed tuning runs), files of a run never an output, exports whole, run files checked


def write_vtab_lists(task: Path, classes: int = 2) -> None:
    """A VTAB-1k task folder as the PETL repositories distribute it: images/, then the four lists
    `relative/path label` (train800val200 = train800 + val200)."""
    from PIL import Image

    lists = {"train800": [], "val200": [], "test": []}
    for split in lists:
        for c in range(classes):
            rel = f"images/{split}_{c}.png"
            (task / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((16, 16, 3), 60 * c, np.uint8)).save(task / rel)
            lists[split].append(f"{rel} {c}")
    lists["train800val200"] = lists["train800"] + lists["val200"]
    for name, lines in lists.items():
        (task / f"{name}.txt").write_text("\n".join(lines) + "\n")


def test_an_empty_vtab_test_list_is_refused_never_replaced_by_val200(tmp_path: Path, capsys) -> None:
    task = tmp_path / "eurosat"
    write_vtab_lists(task)
    (task / "test.txt").write_text("")
    assert lore_cli(*TRAIN[:-6], "--data", task, "--format", "vtab", "--out", tmp_path / "run") == 2
    line = one_error_line(capsys.readouterr().err)
    assert "test.txt" in line and "lists no image" in line
    assert not (tmp_path / "run").exists()


def test_a_split_set_without_test_never_scores_its_training_pool() -> None:
    from lore.data.splits import Splits
    from lore.errors import LoreError

    pool = [("/d/a.png", 0), ("/d/b.png", 1)]
    with pytest.raises(LoreError, match="val images are part of the training pool"):
        Splits(["x", "y"], {"train": pool, "val": pool[:1]}, root="/d").test_split()
    with pytest.raises(LoreError, match="test split lists no image"):
        Splits(["x", "y"], {"train": pool, "val": [("/d/c.png", 0)], "test": []}, root="/d").test_split()
    # an ImageNet-style train/ + val/ folder: val is outside the pool, so it is the test set
    assert Splits(["x", "y"], {"train": pool, "val": [("/d/c.png", 0)]}).test_split() == ("val", [("/d/c.png", 0)])


def test_a_linear_warmup_as_long_as_training_is_refused(colors: Path, tmp_path: Path, capsys) -> None:
    assert lore_cli(*TRAIN, "--data", colors, "--warmup", "linear", "--warmup-epochs", "1",
                    "--out", tmp_path / "run") == 2
    assert "--warmup-epochs 1 with --warmup linear" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


def test_petl_smoke_runs_scale_vpts_warmup_and_train_at_their_rates() -> None:
    from lore.paper.petl import Plan, protocol_base, scaled_warmup

    assert [scaled_warmup(e) for e in (1, 2, 9, 10, 20, 100, 200)] == [0, 0, 0, 1, 2, 10, 20]
    plan = Plan("vtab", ["linear"], ["eurosat"], [1], {"eurosat": None})
    assert protocol_base(plan, {"epochs": 2})["warmup_epochs"] == 0
    assert protocol_base(plan, {})["warmup_epochs"] == 10  # VPT's own schedule is untouched
    assert protocol_base(plan, {"epochs": 2, "warmup_epochs": 1})["warmup_epochs"] == 1  # the user's own


def test_a_grid_option_that_contradicts_a_row_is_refused(tmp_path: Path, capsys) -> None:
    root = tmp_path / "vtab"
    write_vtab_lists(root / "eurosat")
    out = tmp_path / "out"
    assert lore_cli("paper", "vtab", "--data-root", root, "--out", out, "--datasets", "eurosat",
                    "--methods", "lore,lore-no-kp", "--no-kp", *TINY_BACKBONE) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--no-kp contradicts the row 'lore'" in line and not out.exists()
    assert lore_cli("sweep", "--methods", "lore", "--datasets", f"e={root / 'eurosat'}:vtab", "--shots", "1",
                    "--no-kp", "--out", out, *TINY_BACKBONE) == 2
    assert "contradicts the row 'lore'" in one_error_line(capsys.readouterr().err) and not out.exists()


def test_grid_values_that_print_alike_get_their_own_folders() -> None:
    from lore.paper.petl import number

    assert [number(x) for x in (0.1, 0.25, 50.0, 0.0, 1e-4)] == ["0.1", "0.25", "50", "0", "0.0001"]
    assert number(0.1000001) != number(0.1) and float(number(0.1000001)) == 0.1000001


@pytest.mark.parametrize("flag, value, says", [("--lrs", "-1", "--lrs: -1.0 is out of range"),
                                                ("--lrs", "", "--lrs: empty list"),
                                                ("--lrs", "nan", "--lrs: nan is out of range"),
                                                ("--wds", "-0.1", "--wds: -0.1 is out of range"),
                                                ("--seeds", "99999999999999999999", "--seeds: 99999999999999999999 is out")])
def test_grid_ranges_are_checked_before_anything_is_written(tmp_path: Path, capsys, flag, value, says) -> None:
    root = tmp_path / "vtab"
    write_vtab_lists(root / "eurosat")
    out = tmp_path / "out"
    assert lore_cli("paper", "vtab", "--data-root", root, "--out", out, "--datasets", "eurosat",
                    "--methods", "linear", flag, value, *TINY_BACKBONE) == 2
    assert says in one_error_line(capsys.readouterr().err) and not out.exists()


def test_a_huge_seed_is_one_line(colors: Path, tmp_path: Path, capsys) -> None:
    assert lore_cli(*TRAIN, "--data", colors, "--seed", "99999999999999999999", "--out", tmp_path / "run") == 2
    assert "--seed must be in 0..4294967295" in one_error_line(capsys.readouterr().err)


def test_zeroshot_negative_without_a_text_tower_is_refused_before_training(colors: Path, tmp_path: Path,
                                                                          capsys) -> None:
    assert lore_cli(*TRAIN[:-8], "--method", "lore", "--knowledge", "ngram:16", "--negative", "zeroshot",
                    "--data", colors, "--shots", "2", "--epochs", "1", "--out", tmp_path / "run") == 2
    assert "--negative zeroshot needs a CLIP backbone" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


def test_a_vtab_label_of_a_non_ascii_digit_names_file_and_line(tmp_path: Path, capsys) -> None:
    task = tmp_path / "eurosat"
    write_vtab_lists(task)
    (task / "test.txt").write_text("images/test_0.png 0\nimages/test_1.png \u00b2\n")
    assert lore_cli(*TRAIN[:-6], "--data", task, "--format", "vtab", "--out", tmp_path / "run") == 2
    assert "test.txt, line 2" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("content", ["5", "[" * 100_000 + "]" * 100_000])
def test_fgvc_plan_on_a_broken_split_file_is_one_line(tmp_path: Path, capsys, content: str) -> None:
    from PIL import Image

    task = tmp_path / "root" / "CUB_200_2011"
    (task / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(task / "images" / "a.jpg")
    for split in ("train", "val"):
        (task / f"{split}.json").write_text(json.dumps({"a.jpg": 0}))
    (task / "test.json").write_text(content)
    code = lore_cli("paper", "fgvc", "--data-root", tmp_path / "root", "--out", tmp_path / "out", "--plan",
                    "--no-measure", "--datasets", "cub")
    assert code == 2 and "test.json" in one_error_line(capsys.readouterr().err)


def test_resume_of_a_finished_run_leaves_it_alone(lore_run: Path, tmp_path: Path, capsys) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(lore_run, run)
    before = (run / "final.json").read_bytes()
    assert lore_cli("train", "--resume", run) == 0
    assert "is finished (final.json); nothing to resume" in capsys.readouterr().err
    assert (run / "final.json").read_bytes() == before


def test_nothing_inside_a_run_directory_is_another_commands_output(lore_run: Path, colors: Path,
                                                                   tmp_path: Path, capsys) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(lore_run, run)
    checkpoint = next((run / "checkpoints").iterdir())
    before = checkpoint.read_bytes()
    image = next(p for p in colors.rglob("*.png"))
    for argv in (["predict", "--run", run, str(image), "--out", checkpoint],
                 ["predict", "--run", run, str(image), "--out", run / "checkpoints" / "p.csv"],
                 ["eval", "--run", run, "--out", run / "checkpoints"],
                 ["paper", "table1", "--data-root", tmp_path, "--out", run]):
        assert lore_cli(*argv) == 2, argv
        line = one_error_line(capsys.readouterr().err)
        assert "run directory" in line, (argv, line)
    assert checkpoint.read_bytes() == before and not (run / "checkpoints" / "p.csv").exists()


def test_export_publishes_both_files_or_neither_and_checks_the_opset(lore_run: Path, tmp_path: Path,
                                                                     capsys) -> None:
    out = tmp_path / "m.onnx"
    (tmp_path / "m.json").mkdir()  # the description cannot be written there
    assert lore_cli("export", "--run", lore_run, "--out", out) == 2
    assert "m.json" in one_error_line(capsys.readouterr().err) and not out.exists()
    for opset in ("0", "7", "99"):
        assert lore_cli("export", "--run", lore_run, "--out", tmp_path / "o.onnx", "--opset", opset) == 2
        err = capsys.readouterr().err
        assert f"--opset {opset}: torch.onnx writes opsets 18.." in one_error_line(err)
        assert not (tmp_path / "o.onnx").exists()


def _damaged_copy(run: Path, tmp_path: Path, **changes) -> Path:
    import shutil

    copy = tmp_path / "damaged"
    shutil.copytree(run, copy)
    meta = json.loads((copy / "model.json").read_text())
    meta.update(changes)
    (copy / "model.json").write_text(json.dumps(meta))
    return copy


@pytest.mark.parametrize("change, says", [({"num_classes": 10**30}, "outside 2..1,000,000"),
                                          ({"classnames": ["only one"]}, "1 class names for 4 classes")])
def test_a_damaged_model_json_is_one_line(lore_run: Path, colors: Path, tmp_path: Path, capsys, change, says) -> None:
    run = _damaged_copy(lore_run, tmp_path, **change)
    image = next(p for p in colors.rglob("*.png"))
    assert lore_cli("predict", "--run", run, str(image), "--out", tmp_path / "p.csv") == 2
    line = one_error_line(capsys.readouterr().err)
    assert "model.json" in line and says in line


def test_a_list_line_naming_a_symlink_loop_is_one_line(tmp_path: Path, capsys) -> None:
    task = tmp_path / "eurosat"
    write_vtab_lists(task)
    (task / "images" / "loop.png").symlink_to(task / "images" / "loop.png")
    (task / "test.txt").write_text("images/loop.png 0\n")
    assert lore_cli(*TRAIN[:-6], "--data", task, "--format", "vtab", "--out", tmp_path / "run") == 2
    assert "test.txt, line 1" in one_error_line(capsys.readouterr().err)


# ------------------------------------------------------------------------------------------------
# round four, every reader and output: the file an empty split came from, the test split a run
# scored, a run's folders never another command's output, symlink loops in CSV lists


def _png(path: Path, value: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


def _empty_test_split(fmt: str, root: Path) -> str:
    """Two classes of two images in ``fmt``, whose test split lists nothing; the file that says so."""
    labelled = [(f"img/{c}{i}.png", y) for y, c in enumerate("ab") for i in range(2)]
    for name, y in labelled:
        _png(root / name, 120 * y)
    if fmt == "vtab":  # an unnamed task: `relative/path label` lines, four lists
        lines = "".join(f"{n} {y}\n" for n, y in labelled)
        for name in ("train800.txt", "val200.txt", "train800val200.txt"):
            (root / name).write_text(lines)
        (root / "test.txt").write_text("")
        return "test.txt"
    if fmt == "vpt-json":  # {relative path: class id}
        (root / "train.json").write_text(json.dumps(dict(labelled)))
        (root / "test.json").write_text("{}")
        return "test.json"
    if fmt == "coop-split":  # {split: [[path, label, classname], ...]}
        (root / "split_zhou_x.json").write_text(json.dumps({"train": [[n, y, "ab"[y]] for n, y in labelled],
                                                            "val": [], "test": []}))
        return "split_zhou_x.json"
    if fmt == "csv":  # path,label rows; the test file only a header
        (root / "train.csv").write_text("path,label\n" + "".join(f"{n},{'ab'[y]}\n" for n, y in labelled))
        (root / "test.csv").write_text("path,label\n")
        return "test.csv"
    for name, y in labelled:  # imagefolder: train/<class>/..., a test/ folder without classes
        _png(root / "train" / "ab"[y] / Path(name).name, 120 * y)
    (root / "test").mkdir()
    return "test"


@pytest.mark.parametrize("fmt", ["vpt-json", "coop-split", "csv", "imagefolder"])
def test_an_empty_test_split_is_an_error_naming_its_file_never_a_val_score(fmt: str, tmp_path: Path,
                                                                           capsys) -> None:
    root = tmp_path / "task"
    marker = _empty_test_split(fmt, root)
    out = tmp_path / "run"
    assert lore_cli(*TRAIN, "--data", root, "--format", fmt, "--out", out) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(root / marker) in line, line
    assert not out.exists()


def test_without_a_test_split_a_disjoint_val_is_the_test_set_and_the_run_says_so(tmp_path: Path, capsys) -> None:
    root = tmp_path / "task"
    train = {f"img/t{c}{i}.png": y for y, c in enumerate("ab") for i in range(2)}
    val = {f"img/v{c}.png": y for y, c in enumerate("ab")}
    for name, y in {**train, **val}.items():
        _png(root / name, 120 * y)
    (root / "train.json").write_text(json.dumps(train))
    (root / "val.json").write_text(json.dumps(val))
    out = tmp_path / "run"
    assert lore_cli(*TRAIN, "--data", root, "--format", "vpt-json", "--out", out) == 0
    final = json.loads((out / "final.json").read_text())
    assert final["test_split"] == "val" and final["test_samples"] == 2
    assert "no test split" in (out / "config.yaml").read_text() and "no test split" in capsys.readouterr().err
    # a val folder of links to training images is no test set
    shared = tmp_path / "shared"
    for c, y in (("a", 0), ("b", 1)):
        for i in range(2):
            _png(shared / "train" / c / f"{i}.png", 120 * y)
        (shared / "val" / c).mkdir(parents=True)
        (shared / "val" / c / "0.png").symlink_to(shared / "train" / c / "0.png")
    assert lore_cli(*TRAIN, "--data", shared, "--out", tmp_path / "run2") == 2
    assert "part of the training pool" in one_error_line(capsys.readouterr().err)


@pytest.fixture(scope="module")
def linear_run(colors: Path, tmp_path_factory) -> Path:
    """A finished one-epoch linear run with a resumable checkpoint."""
    out = tmp_path_factory.mktemp("round4") / "run"
    assert lore_cli(*TRAIN, "--data", colors, "--out", out) == 0
    assert list((out / "checkpoints").glob("*.safetensors"))
    return out


def test_every_output_flag_refuses_a_run_directory_and_its_folders(linear_run: Path, colors: Path, tmp_path: Path,
                                                                  capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(linear_run, run)
    image = next((colors / "test").rglob("*.png"))
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    capsys.readouterr()
    for argv in (["predict", "--run", run, image, "--out", run / "tb" / "p.csv", "--workers", 0],
                 ["export", "--run", run, "--out", run / "checkpoints" / "m.onnx"],
                 ["eval", "--run", run, "--out", run, "--workers", 0],
                 ["attention", "--run", run, "--data", colors, "--out", run / "checkpoints" / "a.png"],
                 ["report", run, "--out", run / "checkpoints" / "r.html"],
                 ["paper", "vtab", "--data-root", tmp_path, "--out", run],
                 ["paper", "vtab", "--data-root", tmp_path, "--out", run / "checkpoints" / "grid"],
                 ["sweep", "--methods", "linear", "--datasets", f"colors={colors}", "--shots", 2, "--out", run],
                 ["sweep", "--methods", "linear", "--datasets", f"colors={colors}", "--shots", 2,
                  "--out", run / "grid"],
                 ["bench", "--out", run / "checkpoints"]):
        assert lore_cli(*argv) == 2, argv
        line = one_error_line(capsys.readouterr().err)
        assert str(run) in line and "run directory" in line, line
    assert {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == sorted(
        p.relative_to(linear_run) for p in linear_run.rglob("*"))  # no folder made either


def test_a_csv_row_naming_a_symlink_loop_is_one_line_naming_file_and_row(tmp_path: Path, capsys) -> None:
    root = tmp_path / "data"
    for y, c in enumerate("ab"):
        _png(root / "img" / f"{c}.png", 120 * y)
    (root / "loop_a").symlink_to(root / "loop_b")
    (root / "loop_b").symlink_to(root / "loop_a")
    (root / "train.csv").write_text(f"path,label\n{root / 'img' / 'a.png'},a\n{root / 'img' / 'b.png'},b\n")
    (root / "test.csv").write_text(f"path,label\n{root / 'img' / 'a.png'},a\n{root / 'loop_a' / 'x.png'},b\n")
    assert lore_cli(*TRAIN, "--data", root, "--format", "csv", "--out", tmp_path / "run") == 2
    assert f"{root / 'test.csv'}, row 2" in one_error_line(capsys.readouterr().err)


def test_small_mistakes_in_lists_and_options_are_handled_or_named(tmp_path: Path, capsys) -> None:
    from lore.data import load_dataset

    root = tmp_path / "csv"  # lists saved by a Windows editor: a BOM before the header
    for y, c in enumerate("ab"):
        for i in range(2):
            _png(root / "img" / f"{c}{i}.png", 120 * y)
    for name, i in (("train.csv", 0), ("test.csv", 1)):
        (root / name).write_text("\ufeffpath,label\n" + "".join(f"img/{c}{i}.png,{c}\n" for c in "ab"), encoding="utf-8")
    data = load_dataset(str(root), "csv")
    assert data.classnames == ["a", "b"] and [y for _, y in data.splits["test"]] == [0, 1]
    birds = tmp_path / "birds"  # an FGVC split file naming one image twice, with two labels
    for split in ("train", "val", "test"):
        (birds / f"{split}.json").parent.mkdir(exist_ok=True)
        (birds / f"{split}.json").write_text('{"001.A/a.jpg": 1, "002.B/b.jpg": 2}')
    (birds / "train.json").write_text('{"001.A/a.jpg": 1, "001.A/a.jpg": 2}')
    assert lore_cli(*TRAIN, "--data", birds, "--format", "fgvc", "--out", tmp_path / "r1") == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(birds / "train.json") in line and "appears twice" in line
    task = tmp_path / "task"  # an empty val200.txt is named, whichever protocol reads it
    _empty_test_split("vtab", task)
    (task / "test.txt").write_text("img/a0.png 0\n")
    (task / "val200.txt").write_text("\n")
    for fmt in ("vtab", "vtab-tune"):
        assert lore_cli(*TRAIN, "--data", task, "--format", fmt, "--out", tmp_path / "r2") == 2
        assert f"{task / 'val200.txt'} lists no image" in one_error_line(capsys.readouterr().err)
    assert lore_cli("train", *TINY_BACKBONE, "--method", "lore", "--knowledge", "file:", "--data", task,
                    "--format", "vtab", "--device", "cpu", "--out", tmp_path / "r3") == 2
    assert "--knowledge file: names no file" in one_error_line(capsys.readouterr().err)
    assert not any((tmp_path / r).exists() for r in ("r1", "r2", "r3"))


def test_exif_orientation_is_ignored_as_the_reference_pipelines_ignore_it(tmp_path: Path) -> None:
    from PIL import Image

    from lore.data.datasets import load_image

    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(pixels).save(tmp_path / "x.jpg", exif=exif, quality=100)
    image = load_image(str(tmp_path / "x.jpg"))
    assert image.size == (40, 20) and np.asarray(image)[10, 5].min() > 200  # the stored pixels, unrotated


def test_a_clip_text_tower_that_cannot_be_loaded_is_one_line_without_open_clips_own(monkeypatch, capsys) -> None:
    import logging

    from lore.errors import LoreError
    from lore.knowledge import load_open_clip

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # as in a fresh process: no handler yet
    with pytest.raises(LoreError, match="no-such-tag"):
        load_open_clip("ViT-B-32/no-such-tag")
    assert "ERROR:root" not in capsys.readouterr().err and logging.getLogger().handlers == []


def test_task_folders_in_another_letter_case_or_under_lores_own_name_are_found(tmp_path: Path, capsys) -> None:
    vtab = tmp_path / "vtab"
    _empty_test_split("vtab", vtab / "KITTI")
    (vtab / "KITTI" / "test.txt").write_text("img/a0.png 0\n")
    assert lore_cli("paper", "vtab", "--data-root", vtab, "--out", tmp_path / "o", "--datasets", "kitti",
                    "--methods", "linear", "--plan", "--no-measure") == 0
    plan = capsys.readouterr().out
    assert str(vtab / "KITTI") in plan and "MISSING" not in plan
    dogs = tmp_path / "fgvc" / "dogs"  # lore's own name for Stanford Dogs
    dogs.mkdir(parents=True)
    for split in ("train", "val", "test"):
        (dogs / f"{split}.json").write_text('{"n02085620-Chihuahua/a.jpg": 1}')
    assert lore_cli("paper", "fgvc", "--data-root", tmp_path / "fgvc", "--out", tmp_path / "o", "--datasets", "dogs",
                    "--methods", "linear", "--plan", "--no-measure") == 0
    plan = capsys.readouterr().out
    assert str(dogs) in plan and "MISSING" not in plan


def test_a_task_every_run_of_which_would_fail_is_named_once_before_the_grid(tmp_path: Path, capsys) -> None:
    root = tmp_path / "root"
    task = root / "kitti"  # images of 2 of kitti's 4 classes only
    for split in ("train800", "val200", "test"):
        for y in (0, 1):
            _png(task / "img" / f"{split}{y}.png", 120 * y)
        (task / f"{split}.txt").write_text("".join(f"img/{split}{y}.png {y}\n" for y in (0, 1)))
    (task / "train800val200.txt").write_text((task / "train800.txt").read_text() + (task / "val200.txt").read_text())
    out = tmp_path / "o"
    assert lore_cli("paper", "vtab", "--data-root", root, "--out", out, "--datasets", "kitti", "--methods", "linear",
                    *TINY_BACKBONE, "--device", "cpu", "--epochs", 1, "--batch-size", 4) == 2
    err = capsys.readouterr().err
    line = one_error_line(err)
    assert "task kitti (vtab-tune)" in line and "2 classes ('class 2' (label 2), 'class 3' (label 3)) have no image" in line
    assert err.count("no image") == 1 and not out.exists()


def test_a_project_folder_with_its_own_config_yaml_is_no_run_directory(tmp_path: Path) -> None:
    from lore.io import check_output_dir, check_output_file

    project = tmp_path / "project"  # many projects keep a config.yaml at the top, their runs below
    project.mkdir()
    (project / "config.yaml").write_text("seed: 1\n")
    assert check_output_dir(project / "runs" / "x") == project / "runs" / "x"
    assert check_output_file(project / "preds" / "p.csv") == project / "preds" / "p.csv"
    check_output_dir(project, allow_run=False)


def test_an_elpv_label_row_naming_a_symlink_loop_or_a_path_outside_is_one_line(tmp_path: Path) -> None:
    from lore.data.elpv import read_cells
    from lore.errors import LoreError

    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "loop.png").symlink_to(tmp_path / "images" / "loop.png")
    for row, says in (("images/loop.png 0.0 mono", "cannot be resolved"), ("../x.png 0.0 mono", "leads outside")):
        (tmp_path / "labels.csv").write_text(row + "\n")
        with pytest.raises(LoreError, match=rf"labels.csv, line 1: .*{says}"):
            read_cells(tmp_path)
