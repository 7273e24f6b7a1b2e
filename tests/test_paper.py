"""``lore paper``: published numbers, recipes and their layering, the grids, the plan, and one
table run end to end on tiny copies of the datasets in their distributed formats."""

from __future__ import annotations

import csv
import json
import math
import shutil
import statistics
from pathlib import Path

import pytest
import yaml

from lore.cli import _parse, main
from lore.config import from_args
from lore.errors import LoreError
from lore.paper.runner import Value, cell_value, measured_rows, narrow, render_markdown
from lore.paper.tables import (CLIP_B16, CLIP_B32, DATASETS, E2H_16, NATURAL, TABLES, VIT_B16,
                               dataset_groups, published_columns, published_rows)
from lore.recipes import lookup

from conftest import TINY_32 as TINY_ARGS, TINY_CLIP  # noqa: E402

# The paper's Table 3 prints 81.26 as LORE-e's 16/stage average, but its eight cells average 81.51
# (LORE-h's 82.92 - 81.26 = the +1.66 gain the text reports, so the average itself is as intended).
PAPER_INCONSISTENCIES = {("table3", "LORE-e", 16)}


# ---------------------------------------------------------------------------------------------
# published numbers


@pytest.mark.parametrize("table", ["table1", "table2", "table3"])
def test_published_average_is_the_mean_of_its_cells(table: str) -> None:
    columns = published_columns(table)
    assert columns[-1] == "average"
    checked = 0
    for row in published_rows(table):
        cells = [row[c] for c in columns[:-1] if c in row]
        key = (table, row["paper_row"], row["shots"])
        off = abs(statistics.fmean(cells) - row["average"])
        if key in PAPER_INCONSISTENCIES:
            assert off > 0.2  # still as printed
            continue
        # each printed cell and the printed average are rounded to 0.01: they agree within 0.01
        assert off <= 0.01, (key, statistics.fmean(cells), row["average"])
        checked += 1
    assert checked >= 12


def test_published_tables_are_complete_and_agree_with_each_other() -> None:
    t1 = published_rows("table1")
    assert len(t1) == 13 and all(len([c for c in DATASETS if c in r]) == 12 for r in t1)
    assert {(r["method"], r["shots"]) for r in t1} >= {("lore", 16), ("lore", 8), ("zeroshot", 0)}
    lore16 = next(r for r in t1 if (r["method"], r["shots"]) == ("lore", 16))
    assert lore16["average"] == 82.71 and lore16["flowers"] == 98.98 and lore16["patternnet"] == 98.04
    # the 16/stage rows of Table 3 hold exactly the 8 datasets the paper ran
    e2h16 = [r for r in published_rows("table3") if r["shots"] == 16]
    assert all({c for c in DATASETS if c in r} == set(E2H_16) for r in e2h16)
    # Table 7's accuracies are Table 1's zero-shot and Table 5's CLIP averages on the natural datasets
    clip = next(r for r in t1 if r["method"] == "zeroshot")
    t7 = {r["method"]: r for r in published_rows("table7")}
    assert t7["zeroshot"]["accuracy"] == pytest.approx(statistics.fmean(clip[d] for d in NATURAL), abs=0.005)
    t5 = {r["method"]: r for r in published_rows("table5")}
    assert t7["lore"]["accuracy"] == t5["lore"]["clip"] and t7["vpt-deep"]["accuracy"] == t5["vpt-deep"]["clip"]
    assert dataset_groups()["natural"] == NATURAL
    assert sum(len(v) for v in dataset_groups().values()) == 12


# ---------------------------------------------------------------------------------------------
# recipes


def test_recipes_hold_the_reference_configs() -> None:
    r = lookup("flowers", "lore", CLIP_B16, 16)
    assert (r["epochs"], r["batch_size"], r["lr"], r["min_lr"], r["wd"]) == (50, 64, 0.003, 1e-4, 0.5)
    assert (r["global_prompts"], r["local_prompts"]) == (8, 2)
    assert lookup("imagenet", "lore", CLIP_B16, 8)["wd"] == 0.2
    assert lookup("cifar100", "lore", CLIP_B16, 16)["epochs"] == 10
    assert lookup("eurosat", "lore", CLIP_B16, 16)["lr"] == 0.0015
    b32 = lookup("imagenet", "lore", CLIP_B32, 16)
    assert (b32["lr"], b32["batch_size"], b32["global_prompts"], b32["local_prompts"]) == (0.008, 128, 4, 1)
    # the plain (GELU) timm name of the same OpenAI weights finds the same recipe
    assert lookup("dtd", "lore", "vit_base_patch16_clip_224.openai", 8) == lookup("dtd", "lore", CLIP_B16, 8)
    # no reference config exists for the ImageNet-21k ViT: it borrows CLIP B/16's
    assert lookup("dtd", "lore", VIT_B16, 16) == lookup("dtd", "lore", CLIP_B16, 16)
    e2h = lookup("imagenet", "lore", CLIP_B16, 16, "easy-to-hard")
    assert (e2h["epochs"], e2h["wd"], e2h["stage_h_epochs"], e2h["stage_h_lr"]) == (20, 0.05, 5, 1e-4)
    coop = lookup("flowers", "coop", CLIP_B16, 16)
    assert (coop["lr"], coop["epochs"], coop["batch_size"], coop["warmup_epochs"], coop["warmup_lr"]) == \
        (0.002, 200, 32, 1, 1e-5)
    assert lookup("imagenet", "coop", CLIP_B16, 16)["epochs"] == 50
    assert lookup("dtd", "maple", CLIP_B16, 8)["lr"] == 0.0035
    # ProGrad's README: lambda 0.8 at 8 and 16 shots on Flowers102, DTD and EuroSAT, else 1.0
    assert [lookup(d, "prograd", CLIP_B16, s)["prograd_lambda"] for d in ("flowers", "dtd", "eurosat", "cars")
            for s in (16, 8)] == [0.8] * 6 + [1.0] * 2
    # VPT in the ablation trains on LORE's schedule and augmentation, without LORE's prompt budget
    assert lookup("dtd", "vpt-deep", CLIP_B16, 16) == {k: v for k, v in lookup("dtd", "lore", CLIP_B16, 16).items()
                                                       if k in ("epochs", "batch_size", "lr", "min_lr", "wd", "aug")}


def test_a_missing_recipe_names_the_file_and_what_exists() -> None:
    with pytest.raises(LoreError, match=r"dtd\.yaml has no easy-to-hard 16-shot .*it has: fewshot 16-shot, "
                                        r"fewshot 8-shot, easy-to-hard 8-shot"):
        lookup("dtd", "lore", CLIP_B16, 16, "easy-to-hard")
    with pytest.raises(LoreError, match=r"flowers\.yaml has no LORE recipe for backbone 'vit_small_patch16_224'"):
        lookup("flowers", "lore", "vit_small_patch16_224", 16)
    with pytest.raises(LoreError, match=r"no recipe file for dataset 'nope'.*recipes exist for: aircraft"):
        lookup("nope", "lore", CLIP_B16, 16)


def test_recipe_layering_defaults_recipe_config_flags(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("epochs: 7\nwd: 0.9\n")
    args = _parse(["train", "--recipe", "paper", "--dataset", "flowers", "--shots", "16", "--config", str(config),
                   "--wd", "0.3", "--data", "x", "--out", "y"])
    cfg = from_args(args)
    assert cfg.epochs == 7          # --config over the recipe's 50
    assert cfg.wd == 0.3            # the flag over --config's 0.9 and the recipe's 0.5
    assert cfg.global_prompts == 8  # the recipe over the default (None)
    assert cfg.recipe == "paper"
    cfg = from_args(_parse(["train", "--recipe", "paper", "--dataset", "cifar10", "--shots", "8",
                            "--data", "x", "--out", "y"]))
    assert (cfg.epochs, cfg.batch_size, cfg.wd) == (20, 32, 0.001)
    with pytest.raises(LoreError, match="needs --dataset"):
        from_args(_parse(["train", "--recipe", "paper", "--shots", "8", "--data", "x", "--out", "y"]))


def test_paper_recipe_trains_lore_in_the_reference_bn_mode() -> None:
    """The published numbers were made with the reference's model.eval() after epoch 1: --recipe
    paper trains LORE and LORE w/o L_kp so, the baselines as their own papers; a flag still wins."""
    common = ["--recipe", "paper", "--dataset", "dtd", "--shots", "16", "--data", "x", "--out", "y"]
    for extra in ([], ["--no-kp"], ["--curriculum", "easy-to-hard", "--shots", "8"]):
        cfg = from_args(_parse(["train", "--method", "lore", *common, *extra]))
        assert (cfg.bn_mode, cfg.wb_norm) == ("reference", "batch")
    for method in ("vpt-deep", "coop"):
        assert from_args(_parse(["train", "--method", method, *common])).bn_mode == "train"
    assert from_args(_parse(["train", *common, "--bn-mode", "train"])).bn_mode == "train"
    cfg = from_args(_parse(["train", "--method", "lore", "--data", "x", "--out", "y"]))
    assert (cfg.bn_mode, cfg.wb_norm) == ("train", "layer")  # lore train's own default (the study's pick)


# ---------------------------------------------------------------------------------------------
# grids and tables without training


def test_table_grids_match_the_paper() -> None:
    t1 = TABLES["table1"]
    assert [(g.methods, len(g.datasets), g.shots) for g in t1.groups] == [
        (("zeroshot",), 12, (0,)), (("cocoop", "prograd", "clip-adapter", "coop", "maple", "lore"), 12, (16, 8))]
    assert {g.backbone for g in TABLES["table2"].groups} == {CLIP_B32}
    assert {(g.backbone, g.datasets) for g in TABLES["table5"].groups} == {(VIT_B16, NATURAL), (CLIP_B16, NATURAL)}
    t3 = [g for g in TABLES["table3"].groups if g.curriculum == "easy-to-hard"]
    assert [(g.datasets, g.shots) for g in t3] == [(E2H_16, (16,)), (DATASETS, (8,))]
    grid = narrow(TABLES["table1"], [1, 2], methods=["lore"], datasets=["dtd", "flowers"])
    assert [(g.methods, g.datasets) for g in grid.groups] == [(("lore",), ("flowers", "dtd"))]
    with pytest.raises(LoreError, match="--methods nope is not in this table"):  # a typo is named
        narrow(TABLES["table1"], [1], methods=["nope"])


def _done(acc: float, **extra) -> dict:
    return {"status": "done", "final": {"test_acc1": acc, **extra}}


def test_measured_rows_averages_and_marks() -> None:
    grid = narrow(TABLES["table1"], [1, 2], methods=["zeroshot", "lore"], datasets=["dtd", "flowers"])
    results = {("clip-b16", "lore", "dtd", 16, 1): _done(0.5), ("clip-b16", "lore", "dtd", 16, 2): _done(0.7),
               ("clip-b16", "lore", "flowers", 16, 1): _done(0.9), ("clip-b16", "lore", "flowers", 16, 2): _done(0.9),
               ("clip-b16", "lore", "dtd", 8, 1): {"status": "failed", "error": "boom"},
               ("clip-b16", "lore", "dtd", 8, 2): _done(0.4),
               ("clip-b16", "lore", "flowers", 8, 1): {"status": "missing", "error": "not run: /r/flowers not found"},
               ("clip-b16", "lore", "flowers", 8, 2): {"status": "missing", "error": "not run: /r/flowers not found"}}
    for s in (1, 2):
        for d in ("dtd", "flowers"):
            results[("clip-b16", "zeroshot", d, 0, s)] = _done(0.25)
    rows = {(r["method"], r["shots"]): r for r in measured_rows(grid, results)}
    assert set(rows) == {("zeroshot", 0), ("lore", 16), ("lore", 8)}
    lore16 = rows[("lore", 16)]["values"]
    assert lore16["dtd"].value == pytest.approx(60.0) and lore16["flowers"].value == pytest.approx(90.0)
    assert lore16["average"].value == pytest.approx(75.0) and lore16["average"].note == "over 2 of 12"
    assert lore16["cars"].note == "not in this grid"
    lore8 = rows[("lore", 8)]["values"]
    assert lore8["dtd"].value == pytest.approx(40.0) and lore8["dtd"].note == "1/2 seeds"
    assert lore8["flowers"].note == "not run: /r/flowers not found" and lore8["average"].value is None
    md = render_markdown(grid, list(rows.values()), [1, 2])
    assert "| LORE | 16 | 90.00 / 98.98 (-8.98) |" in md.replace(" | — / 87.20", "").replace(
        " | — / 54.34 | — / 78.14 | — / 93.19 | — / 72.39", "")
    assert "not run: /r/flowers not found / 97.48" in md
    assert cell_value(results, "clip-b16", "lore", "dtd", 16).value == pytest.approx(60.0)
    assert cell_value({("t", "m", "d", 16, 1): {"status": "failed", "error": "x"}}, "t", "m", "d", 16).note == "failed: x"
    assert Value().value is None


def test_plan_counts_runs_and_images_and_reads_a_bench_result(tmp_path: Path, capsys) -> None:
    from lore.synthetic.paper_datasets import write_paper_datasets

    root = tmp_path / "root"
    write_paper_datasets(root, ["dtd"])
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"methods": {m: {"train_images_per_s": 100.0, "infer_images_per_s": 400.0}
                                             for m in ("b-b", "vpt-deep", "lore")}}))
    rc = main(["paper", "table5", "--data-root", str(root), "--out", str(tmp_path / "o"), "--plan",
               "--no-measure", "--bench", str(bench)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "dtd         found" in out and "MISSING: " + str(root / "imagenet") + " not found" in out
    # 3 methods x 4 datasets x 2 backbones; on DTD (47 classes, 1,880 test images) each of the 6 runs
    # trains 47 x 16 x 50 images (the recipe's 50 epochs) and tests once
    assert "24 runs (18 on missing datasets, not run), 225,600 training and 11,280 test images" in out
    seconds = 225_600 / 100 + 11_280 / 400
    assert f"{seconds / 3600:.1f} h" in out
    assert not (tmp_path / "o").exists()  # --plan runs nothing
    # the short measured step on this machine (a tiny stand-in backbone here)
    assert main(["paper", "table5", "--data-root", str(root), "--out", str(tmp_path / "o"), "--plan",
                 "--datasets", "dtd", "--methods", "lore", "--backbone", "vit_small_patch16_224",
                 "--backbone-args", TINY_ARGS, "--img-size", "32", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "2 runs (0 on missing datasets, not run), 75,200 training and 3,760 test images" in out
    assert "estimate from measured here (vit_small_patch16_224): " in out


# ---------------------------------------------------------------------------------------------
# end to end on tiny copies


def test_paper_table_runs_marks_missing_datasets_and_resumes(tmp_path: Path, capsys) -> None:
    from lore.synthetic.paper_datasets import write_paper_datasets

    root, out = tmp_path / "fake", tmp_path / "table1"
    write_paper_datasets(root, ["cifar10", "eurosat"])
    clip = tmp_path / "tiny-clip.json"
    clip.write_text(json.dumps(TINY_CLIP))
    argv = ["paper", "table1", "--data-root", str(root), "--out", str(out), "--methods", "zeroshot,lore",
            "--datasets", "cifar10,eurosat", "--shots", "16", "--backbone", CLIP_B16, "--no-pretrained",
            "--backbone-args", TINY_ARGS, "--knowledge", f"clip:{clip}/none", "--img-size", "32",
            "--workers", "0", "--device", "cpu", "--epochs", "1", "--batch-size", "8", "--shots-cap", "2"]

    # 1. every cell measured, the published number and the difference beside it
    assert main(argv) == 0
    records = list(csv.DictReader((out / "table.csv").open()))
    measured = [r for r in records if r["status"] == "measured"]
    per_dataset = [r for r in measured if r["column"] in ("cifar10", "eurosat")]
    assert len(per_dataset) == 4  # zero-shot and LORE 16-shot, on both datasets
    assert not any(r["shots"] == "8" for r in records)  # --shots 16 leaves the 8-shot rows out
    for r in per_dataset:
        assert float(r["difference"]) == pytest.approx(float(r["measured"]) - float(r["published"]))
        assert r["published"]
    run = out / "runs" / "clip-b16" / "eurosat" / "lore" / "16shot" / "seed1993"
    final = json.loads((run / "final.json").read_text())
    lore16 = next(r for r in per_dataset if (r["method"], r["shots"], r["column"]) == ("lore", "16", "eurosat"))
    assert float(lore16["measured"]) == pytest.approx(100 * final["test_acc1"])
    saved = yaml.safe_load((run / "config.yaml").read_text())
    # the resolved recipe (EuroSAT 16-shot: lr 0.0015, wd 1.0) under the explicit flags (epochs, batch)
    assert (saved["recipe"], saved["dataset"], saved["lr"], saved["wd"], saved["epochs"], saved["batch_size"],
            saved["shots"]) == ("paper", "eurosat", 0.0015, 1.0, 1, 8, 2)
    assert (saved["bn_mode"], saved["wb_norm"]) == ("reference", "batch")  # the reference code's White Box
    md = (out / "table.md").read_text()
    assert "`--bn-mode reference`" in md
    assert "| LORE | 16 |" in md and "/ 87.04 (" in md  # LORE's published EuroSAT 16-shot beside ours
    avg = next(r for r in measured if (r["method"], r["shots"], r["column"]) == ("lore", "16", "average"))
    both = [float(r["measured"]) for r in per_dataset if (r["method"], r["shots"]) == ("lore", "16")]
    assert float(avg["measured"]) == pytest.approx(statistics.fmean(both))

    # 2. a deleted dataset leaves its cells marked; the finished cells are skipped, untouched
    finals = sorted(out.glob("runs/clip-b16/cifar10/*/*/seed1993/final.json"))
    stamps = [p.stat().st_mtime_ns for p in finals]
    shutil.rmtree(root / "eurosat")
    capsys.readouterr()
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert err.count(": skipped,") == 2
    assert err.count(f"not run: {root / 'eurosat'} not found") == 2
    assert [p.stat().st_mtime_ns for p in finals] == stamps
    records = {(r["method"], r["shots"], r["column"]): r for r in csv.DictReader((out / "table.csv").open())}
    assert records[("lore", "16", "eurosat")]["status"] == f"not run: {root / 'eurosat'} not found"
    assert records[("lore", "16", "cifar10")]["status"] == "measured"
    assert records[("lore", "16", "average")]["measured"] == ""
    assert f"not run: {root / 'eurosat'} not found / 87.04" in (out / "table.md").read_text()


def test_table4_rows_read_the_task_results() -> None:
    from lore.paper.tasks import task_rows

    grid = narrow(TABLES["table4"], [1993])
    retrieval = {"medium": {"map": 0.5}, "hard": {"map": 0.25}}
    measured = {("clip", "lore", "roxford5k"): retrieval, ("clip", "lore", "rparis6k"): retrieval,
                ("clip", "lore", "spair"): {"pck": 0.2}, ("clip", "lore", "davis"): {"JF": 0.6},
                ("vit", "b-b", "davis"): Value(note="not run: /r/DAVIS not found")}
    rows = {(r["row"]): r for r in task_rows(grid, measured)}
    lore = rows["LORE (CLIP)"]["values"]
    assert (lore["roxford5k-M"].value, lore["rparis6k-H"].value) == (0.5, 0.25)
    assert lore["spair-pck"].value == pytest.approx(20.0) and lore["davis-jf"].value == pytest.approx(60.0)
    assert rows["B-B (ViT)"]["values"]["davis-jf"].note == "not run: /r/DAVIS not found"
    md = render_markdown(grid, list(rows.values()), [1993])
    assert "| LORE (CLIP) | 16 | 0.500 / 0.418 (+0.082) |" in md and "20.00 / 20.71 (-0.71)" in md


def test_warmup_epochs_hold_the_warmup_lr(tmp_path: Path, colors: Path) -> None:
    from conftest import TINY_BACKBONE

    out = tmp_path / "run"
    assert main(["train", "--method", "linear", "--data", str(colors), *TINY_BACKBONE, "--device", "cpu",
                 "--epochs", "4", "--batch-size", "8", "--lr", "0.01", "--min-lr", "0.0",
                 "--warmup-epochs", "1", "--warmup-lr", "0.0001", "--out", str(out)]) == 0
    lrs = [json.loads(line)["lr"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    # Dassl's ConstantWarmupScheduler over CosineAnnealingLR(T_max=4) with WARMUP_RECOUNT: the
    # warm-up epoch, then the cosine from its top: 0.01 (1 + cos(pi e / 4)) / 2 for e = 0, 1, 2
    assert lrs == pytest.approx([1e-4, 0.01, 0.01 * (1 + math.cos(math.pi / 4)) / 2, 0.005])
