"""``lore sweep`` on generated data: every cell runs, failures are recorded, reruns resume."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import pytest

import lore.models.clip_adapter  # noqa: F401  (registers the method)
from lore.cli import main
from lore.errors import LoreError
from lore.sweep import Cell, Dataset, parse_datasets, render_markdown, summarise
from lore.synthetic.colors import write_imagefolder

from conftest import TINY_32 as BACKBONE_ARGS, TINY_CLIP  # noqa: E402


def test_parse_datasets() -> None:
    assert parse_datasets("a=/x/y:coop-split, b=/x:y,c=rel/dir") == [
        Dataset("a", "/x/y", "coop-split"), Dataset("b", "/x:y", "imagefolder"), Dataset("c", "rel/dir")]
    for bad in ("noequals", "a b=/x", "a=/x,a=/y", "=/x"):
        with pytest.raises(LoreError):
            parse_datasets(bad)


def test_table_mean_std_average_and_layout(tmp_path: Path) -> None:
    a, b = Dataset("a", "/a"), Dataset("b", "/b")
    cells = [Cell(d, m, 16, s) for d in (a, b) for m in ("lore", "coop") for s in (1, 2, 3)]
    acc = {("lore", "a"): [0.5, 0.7, 0.9], ("lore", "b"): [0.8, 0.8, 0.8], ("coop", "a"): [0.6, 0.6, None],
           ("coop", "b"): [None, None, None]}
    results = {}
    for c in cells:
        value = acc[(c.method, c.dataset.name)][c.seed - 1]
        results[c] = ({"status": "done", "test_acc1": value} if value is not None
                      else {"status": "failed", "error": "boom"})
    table = summarise(tmp_path, cells, results, ["lore", "coop"], [a, b], [16], [1, 2, 3])
    rows = {(r["method"], r["dataset"]): r for r in table["cells"]}
    assert rows[("lore", "a")]["mean"] == pytest.approx(70.0) and rows[("lore", "a")]["std"] == pytest.approx(20.0)
    assert rows[("lore", "b")]["std"] == pytest.approx(0.0)
    assert rows[("coop", "a")]["n"] == 2 and rows[("coop", "a")]["mean"] == pytest.approx(60.0)
    assert rows[("coop", "b")]["mean"] is None and len(table["failed"]) == 4
    assert table["average"] == [{"method": "lore", "shots": 16, "mean": pytest.approx(75.0)},
                                {"method": "coop", "shots": 16, "mean": None}]
    md = render_markdown(table).splitlines()
    assert "| lore | 70.00 ± 20.00 | 80.00 ± 0.00 | 75.00 |" in md
    assert "| coop | 60.00 ± 0.00 (2/3) | failed | — |" in md
    assert "- coop / b / 16-shot / seed 2: boom" in md


def test_sweep_runs_the_grid_records_failures_and_resumes(tmp_path: Path, capsys) -> None:
    config = tmp_path / "lore-tiny.json"
    config.write_text(json.dumps(TINY_CLIP))
    data = write_imagefolder(tmp_path / "colors", n_train=4, n_test=3)
    out = tmp_path / "sweep"
    options = ["--shots", "2", "--seeds", "1,2", "--out", str(out), "--backbone", "vit_base_patch16_clip_quickgelu_224.openai",
               "--no-pretrained", "--backbone-args", BACKBONE_ARGS, "--knowledge", f"clip:{config}/none",
               "--batch-size", "4", "--img-size", "32", "--workers", "0", "--device", "cpu"]
    common = [*options, "--epochs", "1"]
    methods = ["--methods", "zeroshot,clip-adapter"]

    # 1. a dataset that does not exist fails its cells; the others still run; exit status 2
    rc = main(["sweep", *methods, "--datasets", f"colors={data},broken={tmp_path / 'nope'}", *common])
    assert rc == 2
    err = capsys.readouterr().err
    assert "4 of 8 sweep cells failed" in err
    table = json.loads((out / "table.json").read_text())
    cells = {(c["method"], c["dataset"]): c for c in table["cells"]}
    assert len(cells) == 4
    for m in ("zeroshot", "clip-adapter"):
        ok, bad = cells[(m, "colors")], cells[(m, "broken")]
        accs = [100 * json.loads((out / "colors" / m / "2shot" / f"seed{s}" / "final.json").read_text())["test_acc1"]
                for s in (1, 2)]
        assert ok["n"] == 2 and [r["status"] for r in ok["runs"]] == ["done", "done"]
        assert ok["mean"] == pytest.approx(statistics.fmean(accs))
        assert ok["std"] == pytest.approx(statistics.stdev(accs))
        assert bad["n"] == 0 and bad["mean"] is None
        assert all(r["status"] == "failed" and "no such file" in r["error"] for r in bad["runs"])
    assert len(table["failed"]) == 4
    assert {a["mean"] for a in table["average"]} == {None}  # an incomplete row has no average

    # 2. rerun on the finished dataset: every cell is skipped, quickly, and the table is complete
    finals = sorted(out.glob("colors/*/2shot/seed*/final.json"))
    stamps = [p.stat().st_mtime_ns for p in finals]
    started = time.time()
    assert main(["sweep", *methods, "--datasets", f"colors={data}", *common]) == 0
    assert time.time() - started < 5
    captured = capsys.readouterr()
    assert captured.err.count(": skipped,") == 4
    assert [p.stat().st_mtime_ns for p in finals] == stamps
    table = json.loads((out / "table.json").read_text())
    assert [(c["method"], c["dataset"], c["shots"], c["n"]) for c in table["cells"]] == [
        ("zeroshot", "colors", 2, 2), ("clip-adapter", "colors", 2, 2)]
    assert table["failed"] == []
    for a in table["average"]:
        assert a["mean"] == pytest.approx(next(c["mean"] for c in table["cells"] if c["method"] == a["method"]))
    md = (out / "table.md").read_text()
    assert md in captured.out
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert rows[0] == "| Method | colors | Average |"
    clip_row = next(c for c in table["cells"] if c["method"] == "clip-adapter")
    assert rows[2] == f"| clip-adapter | {clip_row['mean']:.2f} ± {clip_row['std']:.2f} | {clip_row['mean']:.2f} |"

    # 3. a cell killed before final.json resumes from its training checkpoint, to the same result
    cell = out / "colors" / "clip-adapter" / "2shot" / "seed2"
    before = json.loads((cell / "final.json").read_text())["test_acc1"]
    assert list((cell / "checkpoints").glob("*.safetensors"))
    (cell / "final.json").unlink()
    assert main(["sweep", *methods, "--datasets", f"colors={data}", *common]) == 0
    err = capsys.readouterr().err
    assert err.count(": skipped,") == 3 and err.count(": resumed,") == 1
    assert json.loads((cell / "final.json").read_text())["test_acc1"] == pytest.approx(before)

    # 4. other training options would mix recipes in one table: refused before any file is touched
    finished = (out / "table.json").read_text()
    assert main(["sweep", "--methods", "clip-adapter", "--datasets", f"colors={data}", *options,
                 "--epochs", "2"]) == 2
    assert "epochs: 1 there, 2 now" in capsys.readouterr().err
    assert (out / "table.json").read_text() == finished


def test_sweep_rejects_unknown_methods(tmp_path: Path, capsys) -> None:
    rc = main(["sweep", "--methods", "lore,nope", "--datasets", f"x={tmp_path}", "--shots", "1",
               "--out", str(tmp_path / "o")])
    assert rc == 2 and "unknown ['nope']" in capsys.readouterr().err


def test_parse_datasets_with_per_dataset_options() -> None:
    got = parse_datasets("flowers=/r/flowers:dataset=flowers:wd=0.5,dtd=/r/d:t:coop-split:epochs=3:kp=false")
    assert got == [Dataset("flowers", "/r/flowers", "imagefolder", (("dataset", "flowers"), ("wd", 0.5))),
                   Dataset("dtd", "/r/d:t", "coop-split", (("epochs", 3), ("kp", False)))]
    for bad in ("a=/x:nope=1", "a=/x:method=lore", "a=:wd=1"):
        with pytest.raises(LoreError):
            parse_datasets(bad)


def test_cell_options_aliases_and_recipe_layering(tmp_path: Path) -> None:
    from lore.sweep import cell_config

    flowers = parse_datasets("flowers=/r/flowers:dataset=flowers:wd=0.25")[0]
    base = {"recipe": "paper", "backbone": "vit_base_patch16_clip_quickgelu_224.openai", "epochs": 3}
    cfg = cell_config(Cell(flowers, "lore-no-kp", 16, 1), tmp_path, base)
    assert (cfg.method, cfg.kp, cfg.dataset, cfg.shots) == ("lore", False, "flowers", 16)
    assert cfg.wd == 0.25 and cfg.epochs == 3 and cfg.lr == 0.003 and cfg.global_prompts == 8
    assert cfg.out == str(tmp_path / "flowers" / "lore-no-kp" / "16shot" / "seed1")
    # a stand-in backbone keeps the real one's recipe; --shots-cap trains on fewer images
    small = cell_config(Cell(flowers, "coop", 16, 1), tmp_path, {**base, "backbone": "vit_small_patch16_224"},
                        recipe_backbone="vit_base_patch16_clip_quickgelu_224.openai", shots_cap=2)
    assert (small.shots, small.lr, small.warmup_epochs, small.batch_size) == (2, 0.002, 1, 32)
    assert cell_config(Cell(flowers, "zeroshot", 0, 1), tmp_path, base).shots is None


def _table(path: Path, method: str, datasets: list[str], acc: float) -> Path:
    ds = [Dataset(d, f"/{d}") for d in datasets]
    cells = [Cell(d, method, 16, 1) for d in ds]
    table = summarise(path, cells, {c: {"status": "done", "test_acc1": acc} for c in cells}, [method], ds, [16], [1])
    path.mkdir(parents=True, exist_ok=True)
    (path / "table.json").write_text(json.dumps(table))
    return path


def test_sweep_merge_joins_tables(tmp_path: Path, capsys) -> None:
    a = _table(tmp_path / "a", "lore", ["x", "y"], 0.8)
    b = _table(tmp_path / "b", "coop", ["x", "y"], 0.6)
    c = _table(tmp_path / "c", "lore", ["z"], 0.5)
    out = tmp_path / "merged"
    assert main(["sweep", "merge", str(a), str(b), str(c), "--out", str(out)]) == 0
    table = json.loads((out / "table.json").read_text())
    assert table["methods"] == ["lore", "coop"] and [d["name"] for d in table["datasets"]] == ["x", "y", "z"]
    average = {x["method"]: x["mean"] for x in table["average"]}
    assert average["lore"] == pytest.approx((80 + 80 + 50) / 3) and average["coop"] is None  # coop lacks z
    md = (out / "table.md").read_text()
    assert "| lore | 80.00 ± 0.00 | 80.00 ± 0.00 | 50.00 ± 0.00 | 70.00 |" in md
    assert "| coop | 60.00 ± 0.00 | 60.00 ± 0.00 | — | — |" in md
    assert main(["sweep", "merge", str(a), str(a), "--out", str(tmp_path / "m2")]) == 2
    assert "lore / x / 16-shot is in both" in capsys.readouterr().err
    assert main(["sweep", "merge", str(tmp_path / "nope"), "--out", str(tmp_path / "m3")]) == 2
    assert main(["sweep", "--datasets", "x=/x", "--shots", "1", "--out", str(tmp_path / "m4")]) == 2
    assert "--methods is required" in capsys.readouterr().err
