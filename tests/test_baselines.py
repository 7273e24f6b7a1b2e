"""The CLIP comparison methods (zero-shot, CoOp, CLIP-Adapter, Tip-Adapter/-F) on a tiny
random-init CLIP: a timm CLIP image tower and an open_clip text tower from a small JSON config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_clip_spec
from safetensors.torch import load_file

import lore.models.clip_adapter  # noqa: F401  (registers the methods)
import lore.models.coop  # noqa: F401
import lore.models.tip_adapter  # noqa: F401
from lore.backbone import build_black_box
from lore.checkpoint import load_run, load_trainable
from lore.errors import LoreError
from lore.flops import count_gflops
from lore.knowledge import ZEROSHOT_TEMPLATE, encode_classes, load_open_clip
from lore.models import build_model

BACKBONE = "vit_base_patch16_clip_quickgelu_224.openai"
from conftest import TINY_32 as BACKBONE_ARGS  # noqa: E402
NAMES = ["red", "green", "blue", "yellow"]
C = len(NAMES)


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> str:
    return tiny_clip_spec(tmp_path_factory.mktemp("clip"), text_layers=1)


@pytest.fixture(scope="module")
def black_box():
    torch.manual_seed(0)
    return build_black_box(BACKBONE, pretrained=False, backbone_args=BACKBONE_ARGS)


@pytest.fixture(scope="module")
def knowledge(spec) -> torch.Tensor:
    torch.manual_seed(0)
    return encode_classes(spec, NAMES, [ZEROSHOT_TEMPLATE])


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def trainable_names(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def cosine_logits(x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    return 100.0 * F.normalize(x, dim=-1) @ F.normalize(text, dim=-1).t()


def coop(black_box, spec, seed: int = 0, **options):
    torch.manual_seed(seed)  # the tag-less text tower is random: same seed, same tower
    return build_model("coop", black_box, C, classnames=NAMES, text_tower=spec, **options)


# ------------------------------------------------------------------------------------ shared


@pytest.mark.parametrize("method", ["coop", "clip-adapter", "tip-adapter", "tip-adapter-f"])
def test_non_clip_backbone_is_refused(method: str, spec: str) -> None:
    vit = build_black_box("vit_base_patch16_224", pretrained=False,
                          backbone_args="img_size=32,patch_size=8,depth=1,embed_dim=64,num_heads=2")
    with pytest.raises(LoreError, match="needs a CLIP backbone"):
        build_model(method, vit, C, classnames=NAMES, text_tower=spec)


def test_zeroshot_logits_are_100_times_cosine(black_box, knowledge, images) -> None:
    model = build_model("zeroshot", black_box, C, knowledge=knowledge).eval()
    with torch.no_grad():
        embedding = black_box.vit(images)  # timm's own CLIP forward: projected image embedding
        logits = model(images)
    assert logits.shape == (6, C)
    assert torch.allclose(logits, cosine_logits(embedding, knowledge), atol=1e-4)
    assert trainable_names(model) == set()


# ------------------------------------------------------------------------------- CLIP-Adapter


def test_clip_adapter_is_a_residual_bottleneck_on_the_image_embedding(black_box, knowledge, images) -> None:
    model = build_model("clip-adapter", black_box, C, knowledge=knowledge, ratio=0.2).eval()
    assert trainable_names(model) == {"adapter.0.weight", "adapter.2.weight"}  # no biases
    w1, w2 = model.adapter[0].weight, model.adapter[2].weight
    assert w1.shape == (8, 32) and w2.shape == (32, 8)  # d -> d/4 -> d
    with torch.no_grad():
        x = black_box.vit(images)
        adapted = 0.2 * F.relu(F.relu(x @ w1.t()) @ w2.t()) + 0.8 * x
        assert torch.allclose(model(images), cosine_logits(adapted, knowledge), atol=1e-4)
        # ratio 0 leaves the image embedding alone: zero-shot CLIP
        plain = build_model("clip-adapter", black_box, C, knowledge=knowledge, ratio=0.0).eval()
        assert torch.allclose(plain(images), cosine_logits(x, knowledge), atol=1e-4)

    model.train()
    loss, logits, _ = model.training_loss(images, torch.arange(6) % C)
    loss.sum().backward()
    assert logits.shape == (6, C)
    assert {n for n, p in model.named_parameters() if p.grad is not None} == {"adapter.0.weight", "adapter.2.weight"}
    assert w1.grad.abs().sum() > 0 and w2.grad.abs().sum() > 0


def test_clip_adapter_reloads_without_text_embeddings(black_box, knowledge, images) -> None:
    model = build_model("clip-adapter", black_box, C, knowledge=knowledge).eval()
    state = model.trainable_state_dict()
    assert not any(k.startswith("black_box.") for k in state)
    again = build_model("clip-adapter", black_box, C, **json.loads(json.dumps(model.rebuild_options())))
    load_trainable(again, state, "test")
    with torch.no_grad():
        assert torch.equal(again.eval()(images), model(images))


# -------------------------------------------------------------------------------- Tip-Adapter


def _cache(black_box, per_class: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Image embeddings and labels of a class-balanced few-shot set."""
    imgs = torch.randn(per_class * C, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        return black_box(imgs).pooled, torch.arange(per_class * C) % C


def test_tip_adapter_alpha_zero_is_exactly_zeroshot(black_box, knowledge, images) -> None:
    zs = build_model("zeroshot", black_box, C, knowledge=knowledge).eval()
    tip = build_model("tip-adapter", black_box, C, knowledge=knowledge, alpha=0.0, beta=5.5).eval()
    tip.build_cache(_cache(black_box), C)
    with torch.no_grad():
        assert torch.equal(tip(images), zs(images))


def test_tip_adapter_beta_zero_adds_the_class_counts(black_box, knowledge, images) -> None:
    zs = build_model("zeroshot", black_box, C, knowledge=knowledge).eval()
    with torch.no_grad():
        base = zs(images)
    # beta = 0: every cached image has affinity exp(0) = 1, so the cache adds alpha * (images per class)
    tip = build_model("tip-adapter", black_box, C, knowledge=knowledge, alpha=1.5, beta=0.0).eval()
    tip.build_cache(_cache(black_box, per_class=2), C)
    with torch.no_grad():
        logits = tip(images)
    assert torch.allclose(logits - base, torch.full((6, C), 3.0), atol=1e-4)
    assert torch.equal(logits.argmax(-1), base.argmax(-1))  # balanced cache: same prediction
    feats, labels = _cache(black_box, per_class=2)
    tip.build_cache((feats[:5], labels[:5]), C)  # unbalanced: counts 2, 1, 1, 1
    with torch.no_grad():
        shift = tip(images) - base
    assert torch.allclose(shift, 1.5 * torch.tensor([2.0, 1.0, 1.0, 1.0]).expand(6, C), atol=1e-4)


def test_tip_adapter_logits_follow_the_paper(black_box, knowledge, images) -> None:
    feats, labels = _cache(black_box)
    tip = build_model("tip-adapter", black_box, C, knowledge=knowledge, alpha=1.0, beta=5.5).eval()
    tip.build_cache((feats, labels), C)
    keys = F.normalize(feats, dim=-1)
    assert torch.allclose(tip.cache_keys, keys) and tip.cache_keys.shape == (8, 32)
    assert torch.equal(tip.cache_values, F.one_hot(labels, C).float())
    with torch.no_grad():
        f = F.normalize(black_box.vit(images), dim=-1)
        expected = 100 * f @ F.normalize(knowledge, dim=-1).t() + torch.exp(-5.5 * (1 - f @ keys.t())) @ F.one_hot(labels, C).float()
        assert torch.allclose(tip(images), expected, atol=1e-4)
    # a strong, sharp cache recognises its own images, whatever the random zero-shot head says
    sharp = build_model("tip-adapter", black_box, C, knowledge=knowledge, alpha=1e4, beta=200.0).eval()
    sharp.build_cache((feats, labels), C)
    imgs = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(sharp(imgs).argmax(-1), labels)
    assert trainable_names(tip) == set()


def test_tip_adapter_f_trains_only_the_keys(black_box, knowledge, images) -> None:
    tip = build_model("tip-adapter-f", black_box, C, knowledge=knowledge)
    with pytest.raises(LoreError, match="cache is empty"):
        tip.training_loss(images, torch.arange(6) % C)
    feats, labels = _cache(black_box)
    tip.build_cache((feats, labels), C)
    assert trainable_names(tip) == {"cache_keys"}
    assert torch.allclose(tip.cache_keys, F.normalize(feats, dim=-1))
    before = {k: v.clone() for k, v in tip.trainable_state_dict().items()}
    opt = torch.optim.SGD([p for p in tip.parameters() if p.requires_grad], lr=0.5)
    tip.train()
    loss, logits, terms = tip.training_loss(images, torch.arange(6) % C)
    assert loss.shape == (6,) and logits.shape == (6, C) and set(terms) == {"task"}
    loss.mean().backward()
    assert {n for n, p in tip.named_parameters() if p.grad is not None} == {"cache_keys"}
    opt.step()
    after = tip.trainable_state_dict()
    assert not torch.equal(after["cache_keys"], before["cache_keys"])
    for k in ("cache_values", "head.fc.weight", "head.fc.bias"):
        assert torch.equal(after[k], before[k])


@pytest.mark.parametrize("method", ["tip-adapter", "tip-adapter-f"])
def test_tip_adapter_reloads_its_cache_from_the_checkpoint(method, black_box, knowledge, images) -> None:
    tip = build_model(method, black_box, C, knowledge=knowledge, alpha=2.0, beta=3.0).eval()
    tip.build_cache(_cache(black_box), C)
    options = json.loads(json.dumps(tip.rebuild_options()))
    assert options == {"alpha": 2.0, "beta": 3.0, "cache_size": 8}
    again = build_model(method, black_box, C, **options)  # no text embeddings, no few-shot images
    load_trainable(again, tip.trainable_state_dict(), "test")
    with torch.no_grad():
        assert torch.equal(again.eval()(images), tip(images))


# -------------------------------------------------------------------------------------- CoOp


def test_coop_with_handwritten_context_equals_open_clip(black_box, spec) -> None:
    # Put the embeddings of "a photo of a" into the 4 context slots: the prompt becomes
    # "a photo of a <class>." and CoOp's text path must reproduce open_clip's encode_text.
    model = coop(black_box, spec, n_ctx=4)
    torch.manual_seed(0)
    ref, tokenizer = load_open_clip(spec.split(":", 1)[1])
    assert torch.equal(model.text_tower.positional_embedding, ref.positional_embedding)
    with torch.no_grad():
        model.ctx.copy_(ref.token_embedding(tokenizer(["a photo of a"]))[0, 1:5])
        expected = ref.encode_text(tokenizer([f"a photo of a {n}." for n in NAMES]))
        got = model.text_features()
    assert got.shape == (C, 32)
    assert torch.allclose(got, expected, atol=1e-5)


def test_coop_prompt_layout_and_logits(black_box, spec, images) -> None:
    model = coop(black_box, spec)  # default 16 shared context tokens
    assert model.ctx.shape == (16, 32)
    assert 0.015 < model.ctx.std().item() < 0.025  # N(0, 0.02)
    assert trainable_names(model) == {"ctx"}
    tokens = model.tokens
    assert (tokens[:, 0] == 49406).all()  # SOS, then the 16 context slots, then the class name
    assert torch.equal(tokens[:, 1:17], torch.full((C, 16), int(tokens[0, 1])))
    assert model.token_prefix.shape == (C, 1, 32) and model.token_suffix.shape == (C, 77 - 17, 32)
    model.eval()
    with torch.no_grad():
        logits = model(images)
        assert torch.allclose(logits, cosine_logits(black_box.vit(images), model.text_features()), atol=1e-4)


def test_coop_gradients_reach_only_the_context(black_box, spec, images) -> None:
    model = coop(black_box, spec, csc=True, n_ctx=4).train()
    assert model.ctx.shape == (C, 4, 32)
    loss, logits, _ = model.training_loss(images, torch.arange(6) % C)
    assert logits.shape == (6, C)
    loss.sum().backward()
    assert {n for n, p in model.named_parameters() if p.grad is not None} == {"ctx"}
    assert (model.ctx.grad.abs().sum(dim=(1, 2)) > 0).all()  # every class's context learns
    # class-specific: changing class 0's context changes class 0's text feature only
    with torch.no_grad():
        before = model.text_features()
        model.ctx[0] += 1.0
        after = model.text_features()
    changed = (after - before).abs().sum(-1) > 1e-6
    assert changed.tolist() == [True, False, False, False]


def test_coop_eval_caches_text_until_the_context_changes(black_box, spec, knowledge, images) -> None:
    model = coop(black_box, spec, n_ctx=4)
    calls = []
    model.text_tower.register_forward_hook(lambda *_: calls.append(1))
    model.eval()  # entering eval encodes the classes once
    assert len(calls) == 1
    with torch.no_grad():
        first = model(images)
        assert torch.equal(model(images), first) and len(calls) == 1
        model.ctx.copy_(torch.randn(4, 32, generator=torch.Generator().manual_seed(5)))
        moved = model(images)
    assert len(calls) == 2 and (moved - first).abs().max() > 1e-2
    model(images)  # grad enabled: recomputed (training needs the graph)
    assert len(calls) == 3
    # so the per-image inference cost is the image tower's, like zero-shot CLIP's
    zeroshot = build_model("zeroshot", black_box, C, knowledge=knowledge)
    assert count_gflops(model, 32) == pytest.approx(count_gflops(zeroshot, 32), rel=0.01)


def test_coop_checkpoint_holds_only_the_context(black_box, spec, images) -> None:
    model = coop(black_box, spec, n_ctx=4)
    with torch.no_grad():
        model.ctx.normal_()
    state = model.trainable_state_dict()
    assert set(state) == {"ctx"}
    options = json.loads(json.dumps(model.rebuild_options()))
    assert options == {"n_ctx": 4, "csc": False, "classnames": NAMES, "text_tower": spec}
    again = coop(black_box, spec, **{k: v for k, v in options.items() if k not in ("classnames", "text_tower")})
    load_trainable(again, state, "test")
    with torch.no_grad():
        assert torch.allclose(again.eval()(images), model.eval()(images), atol=1e-5)


def test_coop_refuses_non_clip_knowledge(black_box) -> None:
    for spec in ("file:/tmp/k.npy", "ngram:64", "sentence:all-MiniLM-L6-v2"):
        with pytest.raises(LoreError, match="needs a CLIP text tower"):
            build_model("coop", black_box, C, classnames=NAMES, text_tower=spec)


# --------------------------------------------------------------------------- through the harness


@pytest.mark.parametrize("method", ["coop", "tip-adapter", "tip-adapter-f"])
def test_harness_trains_saves_and_reloads(method: str, spec: str, tmp_path: Path) -> None:
    from lore.cli import main
    from lore.synthetic.colors import write_imagefolder

    data = write_imagefolder(tmp_path / "colors", n_train=4, n_test=3)
    out = tmp_path / "run"
    rc = main(["train", "--method", method, "--backbone", BACKBONE, "--no-pretrained",
               "--backbone-args", BACKBONE_ARGS, "--knowledge", spec, "--data", str(data),
               "--shots", "2", "--seed", "3", "--epochs", "1", "--batch-size", "4", "--img-size", "32",
               "--workers", "0", "--device", "cpu", "--coop-ctx", "4", "--out", str(out)])
    assert rc == 0
    final = json.loads((out / "final.json").read_text())
    meta = json.loads((out / "model.json").read_text())
    saved = load_file(str(out / "checkpoint.safetensors"))
    if method == "coop":
        assert set(saved) == {"ctx"} and final["trainable_params"] == 4 * 32
        assert meta["options"]["classnames"] == sorted(NAMES) and meta["options"]["text_tower"] == spec
    else:
        assert meta["options"]["cache_size"] == 2 * C  # the few-shot set, 2 per class
        assert saved["cache_keys"].shape == (2 * C, 32)
        assert final["trainable_params"] == (2 * C * 32 if method == "tip-adapter-f" else 0)
    # reload (CoOp rebuilds its text tower from the spec) and get the same test accuracy
    model, _ = load_run(out)
    assert rc == 0 and main(["eval", "--run", str(out), "--workers", "0", "--device", "cpu"]) == 0
    again = json.loads((out / "eval_test.json").read_text())
    assert again["acc1"] == pytest.approx(final["test_acc1"]) and again["n"] == 3 * C
    assert model.method == method


def test_coop_refuses_a_context_that_truncates_the_class_names(black_box, spec) -> None:
    """A 100-word --ctx-init fills CLIP's 77-token window: the class names would be cut off and every
    class get the same text feature. Refused, naming the option; a context that fits still builds."""
    with pytest.raises(LoreError, match=r"--ctx-init\) leaves no room for the class names .* 77-token window"):
        build_model("coop", black_box, C, classnames=NAMES, text_tower=spec, n_ctx=16,
                    ctx_init=" ".join(["photo"] * 74))
    model = build_model("coop", black_box, C, classnames=NAMES, text_tower=spec, n_ctx=16,
                        ctx_init=" ".join(["photo"] * 70))
    assert model.text_features().shape == (C, 32)
