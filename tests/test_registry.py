"""Methods describe themselves: a method registered in one place is trained, swept, benchmarked,
ordered and labelled everywhere without any other edit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch.nn as nn

from conftest import TINY_BACKBONE, lore_cli


@pytest.fixture
def toy_method():
    """A linear probe with a dropout option, registered between CoOp (6) and Co-CoOp (7)."""
    from lore.models.base import AdaptedViT, make_head
    from lore.models.registry import register, unregister

    class Toy(AdaptedViT):
        method = "toy-probe"

        def __init__(self, black_box, num_classes, drop: float = 0.0):
            super().__init__(black_box, num_classes, nn.Sequential(nn.Dropout(drop), make_head(black_box, num_classes)),
                             drop=drop)

    def build(black_box, num_classes, drop: float = 0.0, **_):
        return Toy(black_box, num_classes, drop)

    register("toy-probe", order=6.5, options=lambda cfg: {"drop": 0.25}, bench=True, bench_as=None,
             aliases={"toy-probe-big": {"batch_size": 8}},
             labels=lambda options: "toy probe", label_order=("toy probe",))(build)
    yield "toy-probe"
    unregister("toy-probe")


def _fake_run(folder: Path, method: str, acc: float, options: dict | None = None) -> None:
    folder.mkdir(parents=True)
    (folder / "final.json").write_text(json.dumps({"method": method, "backbone": "vit", "dataset": "/d/flowers",
                                                   "shots": 16, "seed": 1, "test_acc1": acc}))
    (folder / "model.json").write_text(json.dumps({"method": method, "options": options or {}}))


def test_a_registered_method_appears_everywhere(toy_method, colors, tmp_path, capsys):
    from lore.bench import bench_methods
    from lore.models.registry import row_order
    from lore.sweep import check_methods
    from lore.viz.report import _method_key

    # trained by the one harness, built with the options it declared
    run = tmp_path / "toy"
    assert lore_cli("train", "--method", toy_method, "--data", colors, *TINY_BACKBONE, "--device", "cpu",
                    "--epochs", "1", "--batch-size", "4", "--out", run) == 0
    model = json.loads((run / "model.json").read_text())
    assert model["method"] == toy_method and model["options"]["drop"] == 0.25
    # and predicted from, rebuilt through the registry
    assert lore_cli("predict", "--run", run, colors / "test", "--out", tmp_path / "p.csv") == 0
    # a sweep and the bench know it and its alias
    check_methods([toy_method, "toy-probe-big"])
    assert toy_method in bench_methods() and "toy-probe-big" in bench_methods()
    # tables and reports order it by its declared position and show its own label
    order = row_order()
    assert order.index("coop") < order.index("toy probe") < order.index("cocoop")
    assert _method_key("toy probe") < _method_key("cocoop")
    for name, acc, options in (("lore", 0.8, {}), ("lore", 0.7, {"kp": False}), ("coop", 0.6, {}),
                               ("cocoop", 0.5, {}), (toy_method, 0.55, {})):
        _fake_run(tmp_path / "runs" / f"{name}-{acc}", name, acc, options)
    out = tmp_path / "report.html"
    assert lore_cli("report", tmp_path / "runs", "--out", out) == 0
    from test_viz import parse

    results = next(t for t in parse(out.read_text()).tables if ("flowers 16-shot", False) in t[0])
    assert [row[0][0] for row in results[1:]] == ["coop", "toy probe", "cocoop", "lore (w/o L_kp)", "lore"]


def test_unknown_method_is_named_with_the_registered_ones(tmp_path, capsys):
    from lore.models.registry import available_methods

    assert lore_cli("train", "--method", "vpt-medium", "--data", tmp_path, "--out", tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert "vpt-medium" in err and all(m in err for m in available_methods())


def test_train_help_groups_options_and_lists_the_registered_methods(toy_method, capsys, monkeypatch):
    """`lore train --help`: data, model, optimisation, evaluation and execution options, then one group
    per method with its own options; the --method list comes from the registry (a method registered
    now is in it)."""
    import re

    from lore.cli import _parse
    from lore.models.registry import aliases, methods

    monkeypatch.setenv("COLUMNS", "2000")  # no line breaks inside hyphenated method names
    with pytest.raises(SystemExit):
        _parse(["train", "--help"])
    text = capsys.readouterr().out
    titles = re.findall(r"^(\S[^\n]*) options:$", text, flags=re.M)
    assert titles[:5] == ["model", "data", "optimisation", "evaluation", "execution"]
    assert {"lore", "coop", "maple"} <= set(titles[5:])
    sections = dict(re.findall(r"^(\S[^\n]*) options:\n(.*?)(?=^\S|\Z)", text, flags=re.M | re.S))
    assert "--data " in sections["data"] and "--shots" in sections["data"]
    assert "--lr " in sections["optimisation"] and "--epochs" in sections["optimisation"]
    assert "--val-every" in sections["evaluation"] and "--workers" in sections["execution"]
    assert "--wb-norm" in sections["lore"] and "--wb-norm" not in sections["model"]
    assert "--coop-ctx" in sections["coop"]
    listed = sections["model"]
    for name in [m.name for m in methods()] + list(aliases()):
        assert name in listed
    assert toy_method in listed and "toy-probe-big" in listed
