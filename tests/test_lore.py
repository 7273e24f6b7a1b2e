"""Issue 3: LORE wired end to end (training step, inference path, knowledge cache, ablations)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY, TINY_BACKBONE, lore_cli
from lore import knowledge as knowledge_mod
from lore.checkpoint import load_run
from lore.models import build_model
from lore.whitebox import KLA, LIN


def _tiny_lore(num_classes=4, **kw):
    torch.manual_seed(0)
    k = torch.nn.functional.normalize(torch.randn(num_classes, 16), dim=-1)
    return build_model("lore", "vit_small_patch16_224", num_classes, pretrained=False,
                       backbone_args=TINY, knowledge=k, **kw)


def test_training_step_runs_encoder_once_and_only_two_kla_rows(monkeypatch):
    model = _tiny_lore(num_classes=7).train()
    calls = {"embed": 0, "block0": 0, "rows": [], "all": 0}
    model.black_box.vit.patch_embed.register_forward_hook(lambda *a: calls.__setitem__("embed", calls["embed"] + 1))
    model.black_box.vit.blocks[0].register_forward_hook(lambda *a: calls.__setitem__("block0", calls["block0"] + 1))
    orig = KLA.attention
    monkeypatch.setattr(KLA, "attention", lambda self, e, q, grid_h=None: (calls["rows"].append(q.shape),
                                                                          orig(self, e, q, grid_h))[1])
    x, y = torch.randn(5, 3, 32, 32), torch.tensor([0, 1, 2, 3, 6])
    loss, logits, terms = model.training_loss(x, y)
    loss.mean().backward()
    assert calls["embed"] == 1 and calls["block0"] == 1
    assert calls["rows"] == [torch.Size([5, 2, 16])]  # true and wrong class only, not all 7
    assert set(terms) == {"task", "kp"} and loss.shape == (5,)
    assert torch.allclose(loss, terms["task"] + 0.1 * terms["kp"])


def test_gradients_reach_only_trainable_parts():
    model = _tiny_lore().train()
    loss, _, _ = model.training_loss(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]))
    loss.mean().backward()
    for name, p in model.named_parameters():
        if name.startswith("black_box"):
            assert not p.requires_grad and p.grad is None, name
        else:
            assert p.requires_grad, name
    groups = {n.split(".")[0] for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert groups == {"head", "global_prompts", "lin", "pg", "kla"}


def test_inference_never_calls_kla(monkeypatch):
    model = _tiny_lore().eval()
    boom = lambda *a, **k: (_ for _ in ()).throw(AssertionError("KLA used at inference"))
    for name in ("forward", "forward_rows", "attention"):
        monkeypatch.setattr(KLA, name, boom)
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 32, 32))
        feats = model.features(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 4)
    assert feats["prompts"].shape == (2, 8 + 2, 64) and feats["patches"].shape == (2, 4, 4, 64)


def test_prompts_are_generated_per_image():
    model = _tiny_lore().eval()
    with torch.no_grad():
        p = model.prompts(model.black_box.embed(torch.randn(3, 3, 32, 32)))
    assert p.shape == (3, 2, 10, 64)  # (B, layers, 8 global + 2 local, D)
    assert torch.equal(p[0, :, :8], p[1, :, :8])  # global prompts shared
    assert not torch.allclose(p[0, :, 8:], p[1, :, 8:])  # locality prompts depend on the image


def test_negative_sources():
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    none = _tiny_lore(negative="none").train()
    _, _, terms = none.training_loss(x, y)
    assert "kp" in terms
    zs = _tiny_lore(negative="zeroshot").train()
    zs.set_negatives(torch.tensor([3, 2, 1, 0, 1, 1]))
    loss, _, _ = zs.training_loss(x, y, index=torch.tensor([0, 1, 2, 3]))
    assert torch.isfinite(loss).all()
    with pytest.raises(RuntimeError):
        _tiny_lore(negative="zeroshot").train().training_loss(x, y, index=torch.arange(4))


def test_knowledge_is_computed_once_and_cached(tmp_path, monkeypatch):
    calls = []

    def fake(spec, classnames, templates, device="cpu"):
        calls.append(spec)
        return torch.nn.functional.normalize(torch.randn(len(classnames), 8), dim=-1)

    monkeypatch.setattr(knowledge_mod, "encode_classes", fake)
    cache = tmp_path / "knowledge.safetensors"
    a = knowledge_mod.cached_class_embeddings(cache, "clip:x/y", ["a", "b"], ["{}"])
    b = knowledge_mod.cached_class_embeddings(cache, "clip:x/y", ["a", "b"], ["{}"])
    assert len(calls) == 1 and torch.equal(a, b)
    knowledge_mod.cached_class_embeddings(cache, "clip:x/y", ["a", "c"], ["{}"])  # other classes
    assert len(calls) == 2


def test_file_knowledge_must_match_classes(tmp_path):
    np.save(tmp_path / "k.npy", np.ones((3, 8), np.float32))
    from lore.errors import LoreError
    with pytest.raises(LoreError, match="3 rows but the dataset has 4 classes"):
        knowledge_mod.encode_classes(f"file:{tmp_path / 'k.npy'}", list("abcd"), ["{}"])


@pytest.fixture(scope="module")
def marks(tmp_path_factory) -> Path:
    from lore.synthetic.marks import write_marks
    return write_marks(tmp_path_factory.mktemp("marks"), "ABCD", n_train=10, n_test=6, size=32)


@pytest.fixture(scope="module")
def marks_knowledge(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mk") / "k.safetensors"
    from safetensors.torch import save_file
    save_file({"embeddings": torch.randn(4, 24)}, str(path))
    return path


def test_lore_trains_evaluates_and_reloads_on_local_marks(marks, marks_knowledge, tmp_path):
    runs = {}
    for name, extra in {"lore": [], "no-kp": ["--no-kp"]}.items():
        out = tmp_path / name
        assert lore_cli("train", "--method", "lore", *TINY_BACKBONE, "--data", marks, "--out", out,
                        "--knowledge", f"file:{marks_knowledge}", "--epochs", "2", "--batch-size", "8",
                        *extra) == 0
        runs[name] = json.loads((out / "final.json").read_text())
    out = tmp_path / "vpt"
    assert lore_cli("train", "--method", "vpt-deep", *TINY_BACKBONE, "--data", marks, "--out", out,
                    "--epochs", "2", "--batch-size", "8") == 0
    runs["vpt-deep"] = json.loads((out / "final.json").read_text())

    lore = runs["lore"]
    assert 0.0 <= lore["test_acc1"] <= 1.0 and lore["test_samples"] == 24
    assert {"loss", "loss_task", "loss_kp", "trainable_params", "total_params", "trainable_pct", "gflops"} <= set(lore)
    assert "loss_kp" not in runs["no-kp"]
    # KLA's parameters exist only with L_kp; the generated prompts cost more than VPT's
    assert lore["trainable_params"] > runs["no-kp"]["trainable_params"] > runs["vpt-deep"]["trainable_params"]
    assert runs["no-kp"]["gflops"] == lore["gflops"]  # KLA is not part of inference
    # evaluation of the saved run needs neither the knowledge file nor KLA
    (tmp_path / "lore" / "knowledge.safetensors").unlink()
    assert lore_cli("eval", "--run", tmp_path / "lore", "--workers", "0") == 0
    again = json.loads((tmp_path / "lore" / "eval_test.json").read_text())
    assert again["acc1"] == lore["test_acc1"]
    model, meta = load_run(tmp_path / "lore")
    assert meta["method"] == "lore" and model.knowledge is None


def test_easy_to_hard_curriculum(marks, marks_knowledge, tmp_path):
    out = tmp_path / "e2h"
    assert lore_cli("train", "--method", "lore", *TINY_BACKBONE, "--data", marks, "--out", out,
                    "--knowledge", f"file:{marks_knowledge}", "--epochs", "1", "--batch-size", "8",
                    "--curriculum", "easy-to-hard", "--shots", "3", "--stage-h-epochs", "2") == 0
    final = json.loads((out / "final.json").read_text())
    assert set(final["stages"]) == {"e", "h"}
    assert final["stages"]["h"]["test_acc1"] == final["test_acc1"]
    easy = json.loads((out / "fewshot_e.json").read_text())
    hard = json.loads((out / "fewshot_h.json").read_text())
    assert len(easy["files"]) == 12 and np.bincount(easy["labels"]).tolist() == [3, 3, 3, 3]
    # stage h draws only images the stage-e model misclassified, at most N per class, and says
    # which classes had fewer
    assert hard["files"] and all(p != y for p, y in zip(hard["predicted"], hard["labels"]))
    counts = np.bincount(hard["labels"], minlength=4)
    assert counts.max() <= 3
    classnames = json.loads((out / "model.json").read_text())["classnames"]
    assert hard["short"] == {name: int(c) for name, c in zip(classnames, counts) if c < 3}
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(x["stage"], x["epoch"]) for x in lines] == [("e", 1), ("h", 1), ("h", 2)]
    # a fresh SGD from --stage-h-lr, cosine-annealed per epoch to --min-lr
    assert lines[1]["lr"] == 5e-4 and lines[2]["lr"] < 5e-4


def test_dry_run_matches_reference_budget(tmp_path, capsys):
    """Defaults on CLIP ViT-B/16: ~9.1M trainable parameters, GFLOPs ratio <= 1.15 vs B-B."""
    assert lore_cli("train", "--dry-run", "--method", "lore", "--backbone",
                    "vit_base_patch16_clip_quickgelu_224.openai", "--num-classes", "10", "--out", tmp_path) == 0
    summary = json.loads((tmp_path / "model_summary.json").read_text())
    assert {"trainable_params", "total_params", "gflops"} <= set(summary)
    assert abs(summary["trainable_params"] - 9.1e6) / 9.1e6 < 0.10, summary
    assert summary["gflops"] / summary["gflops_backbone"] <= 1.15
    assert "trainable parameters" in capsys.readouterr().out


def _module_tree(model: torch.nn.Module) -> list[tuple]:
    return ([(name, type(m).__name__) for name, m in model.named_modules()]
            + [(name, tuple(p.shape)) for name, p in model.named_parameters()]
            + [(name, tuple(b.shape)) for name, b in model.named_buffers() if b is not None])


def test_build_model_builds_the_model_lore_train_builds():
    """One default per option: the Python API and `lore train --method lore` give the same White Box
    (LayerNorm / GroupNorm, not the reference's BatchNorm), the same options and the same weights."""
    from lore.cli import _parse
    from lore.config import from_args
    from lore.runs import resolve_backbone_defaults
    from lore.train import build_from_config

    k = torch.nn.functional.normalize(torch.randn(4, 16), dim=-1)
    cfg = resolve_backbone_defaults(from_args(_parse(["train", "--method", "lore", *TINY_BACKBONE,
                                                      "--dry-run", "--num-classes", "4"])))
    trained = build_from_config(cfg, 4, knowledge=k)
    torch.manual_seed(cfg.seed)
    built = build_model("lore", "vit_small_patch16_224", num_classes=4, pretrained=False, backbone_args=TINY,
                        knowledge=k)
    assert _module_tree(built) == _module_tree(trained)
    assert built.options == trained.options
    assert built.options["wb_norm"] == "layer" and built.options["negative"] == "model"
    norms = {type(m).__name__ for m in [*built.lin.modules(), *built.pg.modules()]}
    assert {"GroupNorm", "LayerNorm"} <= norms and "BatchNorm1d" not in norms
    for (name, a), (_, b) in zip(built.trainable_state_dict().items(), trained.trainable_state_dict().items()):
        assert torch.equal(a, b), name
    # the reference's form is one option away, and the layers below have no default of their own
    reference = build_model("lore", built.black_box, num_classes=4, knowledge=k, wb_norm="batch")
    assert "BatchNorm1d" in {type(m).__name__ for m in reference.pg.modules()}
    with pytest.raises(TypeError):
        LIN(64, k=9, blocks=1, variant="vig")  # norm missing
