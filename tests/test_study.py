"""The normalisation / L_kp study's options: each changes what is computed; and the study itself
end to end on a tiny configuration (the full study is a benchmark: benchmarks/lore_study.py)."""

from __future__ import annotations

import gzip
import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from conftest import TINY, TINY_BACKBONE, lore_cli
from lore import bn_modes
from lore.knowledge import encode_classes, knowledge_similarity
from lore.models import build_model
from lore.probe import cross_fitted_predictions

ROOT = Path(__file__).resolve().parents[1]


def _lore(**options):
    torch.manual_seed(0)
    return build_model("lore", "vit_small_patch16_224", 4, pretrained=False, backbone_args=TINY,
                       pg_dropout=0.0, **options)


@pytest.fixture(scope="module")
def marks(tmp_path_factory) -> Path:
    from lore.synthetic.marks import write_marks
    return write_marks(tmp_path_factory.mktemp("marks"), "ABCD", n_train=6, n_test=4, size=32)


# --- White Box normalisation ---------------------------------------------------------------------

@pytest.mark.parametrize("norm", ["layer", "none"])
def test_batch_independent_norms_give_test_time_prompts_equal_to_training_ones(norm):
    """With --wb-norm layer|none an image's prompts do not depend on the other images of its batch:
    the head sees at test time exactly the prompts it was trained with (up to float rounding)."""
    model = _lore(kp=False, wb_norm=norm)
    assert not bn_modes.batch_norms(model)
    e0 = model.black_box.embed(torch.randn(6, 3, 32, 32))
    model.train()
    trained = torch.cat([model.white_box(e0[:3])[2], model.white_box(e0[3:])[2]])
    model.eval()
    alone = torch.cat([model.white_box(e0[i:i + 1])[2] for i in range(6)])
    assert torch.allclose(trained, alone, atol=1e-5)


def test_batchnorm_prompts_depend_on_the_batch_and_the_norms_differ():
    """The control: the reference's BatchNorm in train mode makes an image's prompts depend on its
    batch; and the three --wb-norm forms compute three different things."""
    e0 = None
    out = {}
    for norm in ("batch", "layer", "none"):
        model = _lore(kp=False, wb_norm=norm).train()
        e0 = model.black_box.embed(torch.randn(6, 3, 32, 32)) if e0 is None else e0
        out[norm] = model.white_box(e0)[2]
        if norm == "batch":
            first = model.white_box(e0[:3])[2]
            assert not torch.allclose(first, out[norm][:3], atol=1e-3)
    assert not torch.allclose(out["batch"], out["layer"]) and not torch.allclose(out["layer"], out["none"])


def test_freeze_averages_the_warm_up_batches_then_keeps_them():
    bn = torch.nn.BatchNorm1d(3)
    model = torch.nn.Sequential(bn).train()
    a, b, c = torch.randn(8, 3), torch.randn(8, 3) + 2, torch.randn(8, 3) - 5
    bn_modes.set_frozen(model, False)
    model(a), model(b)
    assert torch.allclose(bn.running_mean, (a.mean(0) + b.mean(0)) / 2, atol=1e-6)  # exact average
    bn_modes.set_frozen(model, True)
    kept = bn.running_mean.clone()
    y = model(c)
    assert torch.equal(bn.running_mean, kept) and model.training and not bn.training
    assert torch.allclose(y, (c - kept) / (bn.running_var + bn.eps).sqrt() * bn.weight + bn.bias, atol=1e-5)


def test_recalibrate_sets_population_statistics_and_leaves_the_rest():
    bn = torch.nn.BatchNorm1d(3)
    model = torch.nn.Sequential(torch.nn.Dropout(0.5), bn).train()
    data = [torch.randn(4, 3) + 1 for _ in range(3)]
    loader = [(x, None, None) for x in data] + [(torch.randn(1, 3), None, None)]  # a batch of one: skipped
    seen = bn_modes.recalibrate(model, loader, torch.device("cpu"))
    assert seen == 12 and model.training and bn.momentum == 0.1
    assert torch.allclose(bn.running_mean, torch.stack([x.mean(0) for x in data]).mean(0), atol=1e-6)


def _train(marks, out: Path, *extra: str) -> int:
    knowledge = out.parent / "k.safetensors"
    if not knowledge.is_file():
        save_file({"embeddings": torch.randn(4, 24)}, str(knowledge))
    return lore_cli("train", "--method", "lore", *TINY_BACKBONE, "--data", marks, "--out", out,
                    "--epochs", "2", "--batch-size", "12", *extra)


def _running(run: Path) -> dict:
    return {k: v for k, v in load_file(str(run / "checkpoint.safetensors")).items() if k.endswith("running_mean")}


def test_bn_modes_freeze_and_recalibrate_through_lore_train(marks, tmp_path):
    """--bn-mode freeze --bn-freeze-steps 1 keeps the first batch's statistics (two more steps change
    nothing); recalibrate saves the training images' population statistics (recomputing them from the
    saved run changes nothing); both differ from train mode's."""
    runs = {}
    for mode, extra in (("train", []), ("freeze1", ["--bn-mode", "freeze", "--bn-freeze-steps", "1"]),
                        ("freeze3", ["--bn-mode", "freeze", "--bn-freeze-steps", "3"]),
                        ("recalibrate", ["--bn-mode", "recalibrate"])):
        runs[mode] = tmp_path / mode
        assert _train(marks, runs[mode], "--no-kp", "--wb-norm", "batch", *extra) == 0
    train, f1, f3, recal = (_running(runs[m]) for m in ("train", "freeze1", "freeze3", "recalibrate"))
    key = next(iter(train))
    assert not torch.allclose(f1[key], f3[key]) and not torch.allclose(f1[key], train[key])
    assert yaml.safe_load((runs["freeze1"] / "config.yaml").read_text())["bn_freeze_steps"] == 1

    # recalibrating the saved run on its training images again changes nothing: it holds them
    import lore.train as train_mod
    from lore import config as config_mod
    from lore.checkpoint import load_run
    from lore.distributed import DistInfo

    model, _ = load_run(runs["recalibrate"])
    cfg = config_mod.make(config_mod.load_yaml(str(runs["recalibrate"] / "config.yaml")))
    ctx = train_mod.Context(cfg, DistInfo(), torch.device("cpu"), runs["recalibrate"],
                            train_mod.run_data_config(cfg, model.black_box))
    train_mod._recalibrate(ctx, model, train_mod.load_data(cfg).get("train"))
    again = {k: v for k, v in model.state_dict().items() if k.endswith("running_mean")}
    assert all(torch.allclose(again[k], recal[k], atol=1e-5) for k in recal)
    assert not torch.allclose(recal[key], train[key])


# --- L_kp: knowledge and the wrong class p ---------------------------------------------------------

def test_random_knowledge_is_fixed_per_class_name_and_learned_knowledge_trains():
    rows = encode_classes("random:64", ["a", "b", "c"], ["{}"])
    assert torch.equal(rows[1], encode_classes("random:64", ["b"], ["{}"])[0])  # seeded by the name
    assert knowledge_similarity(rows) < 0.6 and rows.shape == (3, 64)
    model = _lore(knowledge_dim=16, learn_knowledge=True).train()
    assert model.knowledge is None and model.class_embedding.requires_grad
    loss, _, terms = model.training_loss(torch.randn(4, 3, 32, 32), torch.arange(4))
    loss.sum().backward()
    assert "kp" in terms and model.class_embedding.grad.abs().sum() > 0


def test_probe_negative_is_cross_fitted_and_changes_the_loss():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(40) % 4
    feats = torch.randn(40, 8, generator=g) + 4 * torch.nn.functional.one_hot(labels, 8).float()
    assert (cross_fitted_predictions(feats, labels, 4) == labels).float().mean() > 0.9
    model = _lore(knowledge=torch.randn(4, 24), negative="probe").train()
    images, targets, index = torch.randn(4, 3, 32, 32), torch.arange(4), torch.arange(4)
    with pytest.raises(RuntimeError, match="set_negatives"):
        model.training_loss(images, targets, index)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.set_negatives(targets.clone())  # the probe right everywhere: no negative term
    right = model.training_loss(images, targets, index)[2]["kp"]
    model.load_state_dict(state)
    model.set_negatives((targets + 1) % 4)
    wrong = model.training_loss(images, targets, index)[2]["kp"]
    model.load_state_dict(state)
    model.negative, model.negatives = "none", None
    none = model.training_loss(images, targets, index)[2]["kp"]
    assert torch.allclose(right, none, atol=1e-6) and not torch.allclose(right, wrong, atol=1e-4)


def test_train_names_knowledge_and_p_and_warns_on_degenerate_knowledge(marks, tmp_path, capsys):
    assert _train(marks, tmp_path / "degenerate", "--knowledge", "random:1", "--epochs", "1") == 0
    err = capsys.readouterr().err
    assert "class knowledge random:1 (--knowledge); wrong class p from 'model'" in err
    assert "WARNING: the class knowledge (random:1)" in err and "nearly identical (cosine 1.000" in err
    assert _train(marks, tmp_path / "fine", "--knowledge", "random:64", "--negative", "probe",
                  "--epochs", "1") == 0
    err = capsys.readouterr().err
    assert "wrong class p from 'probe'" in err and "WARNING" not in err
    assert _train(marks, tmp_path / "learned", "--knowledge", "learned:16", "--epochs", "1") == 0
    assert "class_embedding" in load_file(str(tmp_path / "learned" / "checkpoint.safetensors"))


# --- the study, end to end on a tiny configuration --------------------------------------------------

def _fashion_mnist(folder: Path, n_train: int = 60, n_test: int = 30) -> Path:
    """The four files as distributed: IDX, big-endian int32 magic 2051 (images: count, 28, 28) or
    2049 (labels: count), then one unsigned byte per pixel / label; gzip-compressed."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(struct.pack(">iiii", 2051, n, 28, 28) + images.tobytes())
        with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(struct.pack(">ii", 2049, n) + labels.tobytes())
    return folder


def test_the_study_runs_end_to_end_and_picks_on_validation(tmp_path, monkeypatch):
    from test_demo import write_wheel

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    sys.modules.pop("lore_study", None)
    import lore_study

    wheel = write_wheel(tmp_path / "elpv_dataset-1.0.0.post1-py3-none-any.whl", size=48)
    out = tmp_path / "study"
    argv = [
        "--out", str(out), "--elpv", str(wheel), "--fmnist", str(_fashion_mnist(tmp_path / "fm")),
        "--backbone", "vit_small_patch16_224", "--no-pretrained", "--backbone-args", TINY,
        "--elpv-size", "32", "--fmnist-size", "32", "--elpv-pool", "8", "--elpv-val", "2",
        "--fmnist-pool", "6", "--fmnist-val", "2", "--fmnist-test-per-class", "2", "--shots", "2",
        "--regime-shots", "4", "--batch-size", "4", "--epochs", "1", "--seeds", "2", "--lrs", "0.01,0.02",
        "--stats-images", "4", "--amp", "none", "--norm-variants",
        "lore-no-kp train,lore-no-kp reference,lore-no-kp layer", "--kp-variants",
        "lore minilm,lore learned,lore p=probe", "--regimes", "more-shots"]
    result = lore_study.main(argv)
    cells = result["cells"]
    assert result["data"]["elpv"] == {"classes": 2, "pool_minus_val": 12, "val": 4, "test": 32}
    assert result["data"]["fmnist"]["test"] == 20
    elpv = "elpv 1 steps/epoch"
    assert {c.split(" | ")[1] for c in cells if c.startswith(elpv + " |")} == {
        "vpt-deep", "lore-no-kp train", "lore-no-kp reference", "lore-no-kp layer", "lore minilm",
        "lore learned", "lore p=probe"}
    # the lr of a cell is the one with the best mean validation accuracy; the test numbers are its runs
    for cell in cells.values():
        best = max(cell["val_by_lr"].values())
        assert cell["val_by_lr"][f"{cell['lr']:g}"] == best
        assert cell["test_mean"] == pytest.approx(np.mean(cell["test"]))
    val = result["chosen"]["val_mean_over_sets"]
    assert result["chosen"]["variant"] == max(val, key=val.get)
    # a frozen or batch-independent normalisation trains on the prompts it tests with; BatchNorm's
    # batch statistics do not
    assert cells[f"{elpv} | lore-no-kp reference"]["prompt_drift"] == 0
    assert cells[f"{elpv} | lore-no-kp layer"]["prompt_drift"] < 1e-5
    assert cells[f"{elpv} | lore-no-kp train"]["prompt_drift"] > 0.01
    assert 0 < cells[f"{elpv} | lore minilm"]["kla_entropy"] <= cells[f"{elpv} | lore minilm"]["kla_entropy_max"]
    # the paired interval in the table is the t-interval of the per-seed differences
    vpt, train = cells[f"{elpv} | vpt-deep"], cells[f"{elpv} | lore-no-kp train"]
    d = lore_study.paired(train["test"], vpt["test"])
    assert d["mean"] == pytest.approx(np.mean(np.subtract(train["test"], vpt["test"])))
    md = (out / "study.md").read_text()
    assert "## Chosen on validation" in md and f"{d['mean']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]" in md
    assert any(k.startswith("elpv 2 steps/epoch |") for k in cells)  # the regimes part ran
    # a rerun reuses every finished run: same numbers, no training
    calls = []
    monkeypatch.setattr("lore.train.run", lambda cfg: calls.append(cfg))
    again = lore_study.main(argv)
    assert not calls and again["cells"] == cells
