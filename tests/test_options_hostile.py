"""Careless options on the grids and on `lore train`: a schedule that trains nothing, grid options
that contradict a row, grid values that print alike, a failed tuning run, and out-of-range grid
lists over a finished grid. Each is refused up front in one line (exit 2) or handled and said,
and nothing already written is replaced."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import TINY_BACKBONE, lore_cli
from test_hostile_input import TRAIN, one_error_line

GRID = ["--datasets", "eurosat", "--methods", "linear", "--wds", "0", "--seeds", "1", "--batch-size", "4",
        "--device", "cpu", *TINY_BACKBONE]


def write_eurosat(task: Path) -> None:
    """A VTAB-1k task folder as the PETL repositories distribute it (images/ and the lists
    `relative/path label`, train800val200 = train800 + val200), one image per EuroSAT class
    (10 classes) in each list."""
    from PIL import Image

    lists: dict[str, list[str]] = {"train800": [], "val200": [], "test": []}
    for split, lines in lists.items():
        for c in range(10):
            rel = f"images/{split}_{c}.png"
            (task / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((16, 16, 3), 25 * c, np.uint8)).save(task / rel)
            lines.append(f"{rel} {c}")
    lists["train800val200"] = lists["train800"] + lists["val200"]
    for name, lines in lists.items():
        (task / f"{name}.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def smoke_grid(tmp_path_factory) -> tuple[Path, Path, str]:
    """`lore paper vtab --epochs 2` (the README's smoke run) with two rates that print alike at
    `:g` precision: (data root, --out, stderr)."""
    import contextlib
    import io

    tmp = tmp_path_factory.mktemp("smoke")
    write_eurosat(tmp / "vtab" / "eurosat")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = lore_cli("paper", "vtab", "--data-root", tmp / "vtab", "--out", tmp / "out", "--epochs", "2",
                        "--lrs", "0.1,0.1000001", *GRID)
    assert code == 0, err.getvalue()
    return tmp / "vtab", tmp / "out", err.getvalue()


def test_a_petl_smoke_run_scales_the_warmup_says_so_and_trains_in_every_epoch(smoke_grid) -> None:
    _, out, err = smoke_grid
    assert "VPT's warm-up is scaled to 0 epoch(s) (10 of its 100)" in err
    runs = sorted(out.glob("runs/vtab/eurosat/linear/*/*/seed1"))
    assert len(runs) == 3  # two tuning runs, one final
    for run in runs:
        epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [e["epoch"] for e in epochs] == [1, 2]
        assert all(e["lr"] > 0 for e in epochs), (run, epochs)


def test_grid_rates_that_print_alike_train_in_their_own_folders(smoke_grid) -> None:
    _, out, _ = smoke_grid
    tuned = sorted(p.name for p in (out / "runs/vtab/eurosat/linear/tune").iterdir())
    assert tuned == ["lr0.1000001_wd0", "lr0.1_wd0"]  # `:g` would give both "lr0.1"
    rates = [yaml.safe_load((out / "runs/vtab/eurosat/linear/tune" / t / "seed1/config.yaml").read_text())["lr"]
             for t in tuned]
    assert rates == [0.1000001 / 256 * 4, 0.1 / 256 * 4]  # each folder holds its own rate
    table = json.loads((out / "table.json").read_text())
    assert [r["status"] for r in table["runs"][0]["tuned"]] == ["done", "done"]


@pytest.mark.parametrize("flag, value", [("--lrs", "-1"), ("--wds", "-0.5"), ("--seeds", "99999999999999999999"),
                                         ("--epochs", "-1")])
def test_a_bad_grid_option_over_a_finished_grid_leaves_its_table(smoke_grid, capsys, flag, value) -> None:
    root, out, _ = smoke_grid
    before = {p.name: p.read_bytes() for p in out.glob("table.*")}
    assert set(before) == {"table.md", "table.csv", "table.json"}
    # the flag comes last: it wins over the same flag in GRID
    assert lore_cli("paper", "vtab", "--data-root", root, "--out", out, "--epochs", "2", "--lrs", "0.1",
                    *GRID, flag, value) == 2
    assert one_error_line(capsys.readouterr().err).startswith(f"lore: error: {flag}")
    assert {p.name: p.read_bytes() for p in out.glob("table.*")} == before


def test_a_failed_tuning_run_is_never_a_clean_exit(tmp_path: Path, capsys) -> None:
    write_eurosat(tmp_path / "vtab" / "eurosat")
    # a rate beyond float32 fails in the optimiser's first step; 0.1 trains and is chosen
    assert lore_cli("paper", "vtab", "--data-root", tmp_path / "vtab", "--out", tmp_path / "out", "--epochs", "1",
                    "--lrs", "0.1,1e300", *GRID) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "1 of 3 runs failed (first: linear / eurosat tuning lr 1e+300 wd 0" in line
    assert str(tmp_path / "out" / "table.json") in line
    table = json.loads((tmp_path / "out" / "table.json").read_text())
    assert table["runs"][0]["chosen"] == [0.1, 0.0]  # the table is written all the same


@pytest.mark.parametrize("extra, says", [
    (["--warmup", "linear", "--warmup-epochs", "1"], "--warmup-epochs 1 with --warmup linear"),
    (["--warmup-epochs", "1", "--warmup-lr", "0"], "--warmup-lr 0 for --warmup-epochs 1 of --epochs 1"),
    (["--warmup-epochs", "1", "--warmup-lr", "-1", "--epochs", "2"], "--warmup-lr must be >= 0"),
])
def test_a_schedule_that_trains_nothing_is_refused(colors: Path, tmp_path: Path, capsys, extra, says) -> None:
    assert lore_cli(*TRAIN, "--data", colors, *extra, "--out", tmp_path / "run") == 2
    assert says in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


def test_a_grid_option_that_contradicts_a_row_is_refused_in_every_grid(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    (tmp_path / "root").mkdir()
    assert lore_cli("paper", "table1", "--data-root", tmp_path / "root", "--out", out, "--methods", "lore",
                    "--no-kp", *TINY_BACKBONE) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "lore paper table1: --no-kp contradicts the row 'lore' (which trains with --kp)" in line
    assert not out.exists()
    write_eurosat(tmp_path / "vtab" / "eurosat")
    # the value a row has anyway is no contradiction: --no-kp beside lore-no-kp only
    assert lore_cli("paper", "vtab", "--data-root", tmp_path / "vtab", "--out", out, "--plan", "--no-measure",
                    "--datasets", "eurosat", "--methods", "lore-no-kp", "--no-kp", *GRID[4:]) == 0
    assert lore_cli("paper", "vtab", "--data-root", tmp_path / "vtab", "--out", out, "--methods",
                    "lore,lore-no-kp", "--kp", "--datasets", "eurosat", *GRID[4:]) == 2
    assert "--kp contradicts the row 'lore-no-kp'" in one_error_line(capsys.readouterr().err)


def test_a_grid_row_name_on_lore_train_says_which_options_it_stands_for(colors: Path, tmp_path: Path,
                                                                        capsys) -> None:
    assert lore_cli(*TRAIN, "--data", colors, "--method", "lore-no-kp", "--out", tmp_path / "run") == 2
    assert "use --method lore --no-kp" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("extra, says", [
    (["--knowledge", "learned:0"], "--knowledge 'learned:0': the width after ':' must be an integer in [1, 65536]"),
    (["--knowledge", "learned:"], "--knowledge learned:: give the width, e.g. learned:512"),
    (["--knowledge", "random"], "--knowledge random: give the width, e.g. random:512"),
    (["--num-classes", "7"], "--num-classes 7: the data sets the number of classes"),
    (["--dataset", "eurosat", "--format", "vtab"], "--dataset eurosat reads --data in that dataset's own layout; "
                                                   "--format vtab would be ignored"),
])
def test_an_option_the_run_cannot_honour_is_refused_before_anything_is_written(colors: Path, tmp_path: Path,
                                                                                capsys, extra, says) -> None:
    args = [a if a != "linear" else "lore" for a in TRAIN] if extra[0] == "--knowledge" else TRAIN
    assert lore_cli(*args, "--data", colors, *extra, "--out", tmp_path / "run") == 2
    assert says in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


def test_a_grid_refuses_a_knowledge_width_before_it_starts(tmp_path: Path, capsys) -> None:
    write_eurosat(tmp_path / "vtab" / "eurosat")
    out = tmp_path / "out"
    assert lore_cli("paper", "vtab", "--data-root", tmp_path / "vtab", "--out", out, "--knowledge", "learned:0",
                    "--datasets", "eurosat", "--methods", "lore", *GRID[4:]) == 2
    assert "--knowledge 'learned:0'" in one_error_line(capsys.readouterr().err) and not out.exists()


def test_another_methods_keys_in_a_config_file_are_named(colors: Path, tmp_path: Path, capsys) -> None:
    config = tmp_path / "options.yaml"
    config.write_text("coop_ctx: 4\n")  # CoOp's context length: ProGrad reads it too, linear does not
    assert lore_cli(*TRAIN, "--data", colors, "--config", config, "--out", tmp_path / "run") == 0
    warnings = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("lore: warning:")]
    assert warnings == ["lore: warning: --coop-ctx is an option of coop; --method linear does not read it"]
    from lore.config import make
    from lore.option_warnings import foreign_options

    assert foreign_options(make({"method": "prograd", "coop_ctx": 4, "data": "d", "out": "o"})) == []


@pytest.mark.parametrize("method, extra, says", [
    ("linear", ["--log-images"], "--log-images draws into TensorBoard only"),
    ("lore", ["--knowledge", "ngram:16", "--no-kp", "--kp-weight", "3"], "--kp-weight 3.0 weighs L_kp, which --no-kp"),
    ("lore", ["--knowledge", "ngram:16", "--wb-norm", "layer", "--bn-mode", "freeze"],
     "--bn-mode freeze acts on BatchNorm layers, and this lore model (--wb-norm layer) has none"),
])
def test_an_inert_option_is_said_in_one_warning(colors: Path, tmp_path: Path, capsys, method, extra, says) -> None:
    args = [a if a != "linear" else method for a in TRAIN]
    assert lore_cli(*args, "--data", colors, *extra, "--out", tmp_path / "run") == 0
    warnings = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("lore: warning:")]
    assert len(warnings) == 1 and says in warnings[0], warnings


def test_a_huge_label_in_an_unknown_vtab_task_is_named_against_the_image_count(tmp_path: Path, capsys) -> None:
    task = tmp_path / "mytask"
    write_eurosat(task)
    lines = (task / "test.txt").read_text().splitlines()
    (task / "test.txt").write_text("\n".join(lines[:-1] + [f"images/test_9.png {10**30}"]) + "\n")
    assert lore_cli(*TRAIN[:-6], "--data", task, "--format", "vtab", "--out", tmp_path / "run") == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"test.txt, line 10: label {10**30} but the lists hold 40 images, so a label is at most 39" in line


@pytest.mark.parametrize("seed, seeds", [("-1", "3"), ("99999999999999999999", "3"), ("4294967294", "3")])
def test_demo_seeds_out_of_range_are_refused_before_anything_is_written(tmp_path: Path, capsys, seed, seeds) -> None:
    # the final runs use seeds --seed .. --seed + --seeds - 1: the last of them must be a valid seed too
    assert lore_cli("demo", "--out", tmp_path / "demo", "--seed", seed, "--seeds", seeds) == 2
    assert f"--seed {seed} with --seeds {seeds}: every seed must be in 0..4294967295" in \
        one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "demo").exists()


def test_a_negative_zero_in_a_grid_list_is_the_value_zero_and_its_folder() -> None:
    from lore.paper.petl import number
    from lore.sweep import split_values

    wds = split_values("-0,0.001", float, "--wds")
    assert [number(w) for w in wds] == ["0", "0.001"]  # the folder a finished grid's wd 0 already has
    with pytest.raises(Exception, match="repeated values"):
        split_values("0,-0", float, "--wds")


@pytest.mark.parametrize("lrs, batch, says", [("1e308", "512", "of inf"), ("5e-324", "4", "of 0.0")])
def test_a_grid_rate_that_scales_to_no_usable_rate_is_named_as_lrs(tmp_path: Path, capsys, lrs, batch, says) -> None:
    write_eurosat(tmp_path / "vtab" / "eurosat")
    assert lore_cli("paper", "vtab", "--data-root", tmp_path / "vtab", "--out", tmp_path / "out", "--lrs", lrs,
                    *GRID, "--batch-size", batch) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"lore: error: --lrs: {float(lrs)!r} scales to a learning rate {says}"), line
    assert not (tmp_path / "out").exists()
