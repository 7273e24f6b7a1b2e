"""Co-CoOp, ProGrad and MaPLe on a tiny random-init CLIP (a timm CLIP image tower and an open_clip
text tower from a small JSON config), and the Black Box's first-J-layers prompting MaPLe uses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_clip_spec

from lore.backbone import build_black_box
from lore.checkpoint import load_run, save_model
from lore.errors import LoreError
from lore.knowledge import load_open_clip
from lore.models import build_model
from lore.models.prograd import kl_to_zeroshot, project_conflicting

BACKBONE = "vit_base_patch16_clip_quickgelu_224.openai"
# average pooling: a random CLS token barely depends on the image, the mean patch token does
from conftest import TINY_32  # noqa: E402

BACKBONE_ARGS = TINY_32 + ",global_pool=avg"
NAMES = ["blue", "green", "red", "yellow"]  # the colour dataset's classes, in folder order
C = len(NAMES)
W = 32  # text width = joint embedding width of the tiny CLIP
D = 64  # image tower width


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> str:
    return tiny_clip_spec(tmp_path_factory.mktemp("clip"), text_layers=2)


@pytest.fixture(scope="module")
def black_box():
    torch.manual_seed(0)
    return build_black_box(BACKBONE, pretrained=False, backbone_args=BACKBONE_ARGS)


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def build(method: str, black_box, spec: str, seed: int = 0, **options):
    torch.manual_seed(seed)  # the tag-less text tower is random: same seed, same tower
    return build_model(method, black_box, C, classnames=NAMES, text_tower=spec, **options)


def reference_clip(spec: str, seed: int = 0):
    """The open_clip model the method's text tower came from (built with the same seed)."""
    torch.manual_seed(seed)
    return load_open_clip(spec.split(":", 1)[1])


def grads(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def n_trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ------------------------------------------------------------------- Black Box: first J layers


def test_black_box_prompts_only_the_first_layers(black_box, images) -> None:
    vit = build_black_box("vit_small_patch16_224", pretrained=False,
                          backbone_args="img_size=32,patch_size=8,depth=3,embed_dim=64,num_heads=2")
    prompts = torch.randn(1, 2, 3, 64, generator=torch.Generator().manual_seed(2))  # L_p = 2 < depth 3
    with torch.no_grad():
        out = vit(images, prompts)
        m = vit.vit  # by hand: insert before block 0, replace before block 1, then let them flow
        x = m._pos_embed(vit.embed(images))
        x = m.norm_pre(torch.cat([x[:, :1], prompts[:, 0].expand(3, -1, -1), x[:, 1:]], dim=1))
        x = m.blocks[0](x)
        x = m.blocks[1](torch.cat([x[:, :1], prompts[:, 1].expand(3, -1, -1), x[:, 4:]], dim=1))
        x = m.norm(m.blocks[2](x))
    assert torch.allclose(out.prompts, x[:, 1:4], atol=1e-5)
    assert torch.allclose(out.patches.flatten(1, 2), x[:, 4:], atol=1e-5)
    with pytest.raises(ValueError, match="1..3"):
        vit(images, torch.randn(1, 4, 3, 64))


# -------------------------------------------------------------------------------- ProGrad


def test_projection_removes_a_conflicting_component_and_keeps_an_aligned_one() -> None:
    g = torch.tensor([1.0, 0.0])
    conflicting = torch.tensor([-1.0, 1.0])  # g . ref = -1 < 0
    projected = project_conflicting(g, conflicting, lam=1.0)
    assert torch.allclose(projected, torch.tensor([0.5, 0.5]))
    assert torch.dot(projected, conflicting).abs() < 1e-7  # no component against ref is left
    assert torch.allclose(project_conflicting(g, conflicting, lam=0.5), torch.tensor([0.75, 0.25]))
    aligned = torch.tensor([1.0, 1.0])
    assert torch.equal(project_conflicting(g, aligned), g)
    assert torch.equal(project_conflicting(g, torch.tensor([0.0, 3.0])), g)  # orthogonal: kept
    assert torch.equal(project_conflicting(g, torch.zeros(2)), g)  # no reference gradient
    big = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))  # any shape, per tensor
    assert project_conflicting(big, -big).abs().max() < 1e-6


def test_kl_is_zeroshot_to_model_with_temperature() -> None:
    logits, zeroshot = torch.randn(5, C), torch.randn(5, C)
    expected = F.kl_div(F.log_softmax(logits / 2, -1), F.log_softmax(zeroshot / 2, -1),
                        reduction="none", log_target=True).sum(-1) * 4
    assert torch.allclose(kl_to_zeroshot(logits, zeroshot, 2.0), expected, atol=1e-6)
    assert torch.allclose(kl_to_zeroshot(zeroshot, zeroshot), torch.zeros(5), atol=1e-6)


@pytest.fixture(scope="module")
def zeroshot_text(spec) -> torch.Tensor:
    ref, tokenizer = reference_clip(spec)
    with torch.no_grad():
        return F.normalize(ref.encode_text(tokenizer([f"a photo of a {n}." for n in NAMES])), dim=-1)


def test_prograd_backward_gives_the_projected_cross_entropy_gradient(black_box, spec, zeroshot_text, images) -> None:
    model = build("prograd", black_box, spec, knowledge=zeroshot_text, n_ctx=4, lam=1.0).train()
    assert model.ctx.shape == (4, W) and n_trainable(model) == 4 * W
    # context initialised from "a photo of a" (4 of 4 slots): the zero-shot prompt itself
    assert torch.allclose(model.text_features(), build_zeroshot_features(spec), atol=1e-5)
    targets = torch.tensor([1, 2, 3])
    with torch.no_grad():
        model.ctx.add_(0.05 * torch.randn(4, W, generator=torch.Generator().manual_seed(3)))
    ce_ref, kl_ref = _ce_and_kl(model, images, targets, zeroshot_text)
    g_ce = torch.autograd.grad(ce_ref.mean(), model.ctx, retain_graph=True)[0]
    g_kl = torch.autograd.grad(kl_ref.mean(), model.ctx)[0]
    loss, logits, terms = model.training_loss(images, targets)
    assert set(terms) == {"task", "kl"} and torch.allclose(loss, ce_ref) and torch.allclose(terms["kl"], kl_ref)
    (loss.sum() * 7.0).backward()  # any loss scale (the harness's sum / batch, AMP's scaler) passes through
    assert grads(model) == {"ctx"}
    expected = 7.0 * 3 * project_conflicting(g_ce, g_kl, 1.0)
    assert (model.ctx.grad - expected).norm() < 1e-4 * expected.norm()
    conflict = bool(torch.dot(g_ce.flatten(), g_kl.flatten()) < 0)
    assert conflict == bool((model.ctx.grad - 21.0 * g_ce).norm() > 1e-3 * expected.norm())
    model.ctx.grad = None  # a plain backward (no training_loss before it) is not projected
    model.logits(black_box(images).pooled).sum().backward()
    assert model.ctx.grad is not None


def build_zeroshot_features(spec: str) -> torch.Tensor:
    ref, tokenizer = reference_clip(spec)
    with torch.no_grad():
        return ref.encode_text(tokenizer([f"a photo of a {n}." for n in NAMES]))


def _ce_and_kl(model, images, targets, zeroshot_text):
    x = model.black_box(images).pooled.detach()
    logits = model.logits(x)
    zs = 100 * F.normalize(x, dim=-1) @ zeroshot_text.t()
    return F.cross_entropy(logits, targets, reduction="none"), kl_to_zeroshot(logits, zs)


def test_prograd_projection_is_used_on_a_conflict(black_box, spec, zeroshot_text, images) -> None:
    # a random context far from the zero-shot one: pulling towards the labels and towards the
    # zero-shot predictions conflict for some batch; the projected gradient then differs from g_ce
    seen = 0
    for seed in range(6):
        model = build("prograd", black_box, spec, knowledge=zeroshot_text, n_ctx=4, ctx_init=None, seed=seed)
        targets = torch.randint(0, C, (3,), generator=torch.Generator().manual_seed(seed))
        ce, kl = _ce_and_kl(model, images, targets, zeroshot_text)
        g_ce = torch.autograd.grad(ce.mean(), model.ctx, retain_graph=True)[0]
        g_kl = torch.autograd.grad(kl.mean(), model.ctx)[0]
        if torch.dot(g_ce.flatten(), g_kl.flatten()) >= 0:
            continue
        model.training_loss(images, targets)[0].mean().backward()
        assert torch.dot(model.ctx.grad.flatten(), g_kl.flatten()).abs() < 1e-4 * g_ce.norm() * g_kl.norm()
        seen += 1
    assert seen > 0


def test_prograd_refuses_to_train_without_the_zeroshot_classifier(black_box, spec, images) -> None:
    model = build("prograd", black_box, spec, n_ctx=4)
    with pytest.raises(LoreError, match="zero-shot"):
        model.training_loss(images, torch.tensor([0, 1, 2]))
    with pytest.raises(LoreError, match="zero-shot class text embeddings"):
        build("prograd", black_box, spec, knowledge=torch.randn(C, 7))


# -------------------------------------------------------------------------------- Co-CoOp


def test_cocoop_meta_net_context_and_parameter_count(black_box, spec) -> None:
    model = build("cocoop", black_box, spec)
    assert model.ctx.shape == (4, W)
    net = model.meta_net
    assert [tuple(net[0].weight.shape), tuple(net[2].weight.shape)] == [(W // 16, W), (W, W // 16)]  # d -> d/16 -> w
    assert isinstance(net[1], torch.nn.ReLU)
    assert n_trainable(model) == 4 * W + (W * 2 + 2) + (2 * W + W)  # ViT-B/16: 2,048 + 33,312 = 35,360
    ref, tokenizer = reference_clip(spec)
    with torch.no_grad():
        words = ref.token_embedding(tokenizer(["a photo of a"]))[0, 1:5]
    assert torch.equal(model.ctx.detach(), words)


def test_cocoop_batches_the_text_tower_over_images_and_classes(black_box, spec, images) -> None:
    model = build("cocoop", black_box, spec, text_batch=5).eval()
    with torch.no_grad():
        model.meta_net[2].bias.normal_()  # a visible image-dependent shift
        x = black_box(images).pooled
        calls = []
        hook = model.text_tower.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[0]))
        feats = model.image_text_features(x)
        hook.remove()
        assert feats.shape == (3, C, W)
        assert calls == [5, 5, 2]  # B * C = 12 prompts in chunks of text_batch, no loop over images
        # the same as encoding each image's prompts on its own
        bias = model.meta_net(F.normalize(x, dim=-1))
        for b in range(3):
            ctx = (model.ctx + bias[b]).expand(C, -1, -1)
            one = model.text_tower(torch.cat([model.token_prefix, ctx, model.token_suffix], 1), model.tokens)
            assert torch.allclose(feats[b], one, atol=1e-5)
        logits = model(images)
        expected = 100 * torch.einsum("bd,bcd->bc", F.normalize(x, dim=-1), F.normalize(feats, dim=-1))
        assert torch.allclose(logits, expected, atol=1e-4)
        assert (feats[0] - feats[1]).abs().max() > 1e-4  # instance-conditional


def test_cocoop_gradients_reach_only_context_and_meta_net(black_box, spec, images) -> None:
    model = build("cocoop", black_box, spec).train()
    loss, logits, _ = model.training_loss(images, torch.tensor([0, 1, 2]))
    loss.sum().backward()
    assert logits.shape == (3, C)
    assert grads(model) == {"ctx", "meta_net.0.weight", "meta_net.0.bias", "meta_net.2.weight", "meta_net.2.bias"}


# ---------------------------------------------------------------------------------- MaPLe


def test_maple_shapes_parameter_count_and_coupling(black_box, spec) -> None:
    model = build("maple", black_box, spec, depth=2)
    assert model.ctx.shape == (2, W) and model.deep_text.shape == (1, 2, W)
    assert model.proj.weight.shape == (D, W) and len(model.deep_proj) == 1
    # J couplings text -> image width, J language prompt sets of n_ctx (as the paper's 3.55M on B/16)
    assert n_trainable(model) == 2 * (W * D + D) + 2 * 2 * W
    prompts = model.vision_prompts()
    assert prompts.shape == (1, 2, 2, D)  # (1, J, n_ctx, image width): first J image layers
    with torch.no_grad():
        assert torch.allclose(prompts[0, 0], model.proj(model.ctx), atol=1e-6)
        assert torch.allclose(prompts[0, 1], model.deep_proj[0](model.deep_text[0]), atol=1e-6)
    ref, tokenizer = reference_clip(spec)
    with torch.no_grad():  # context = the first 2 tokens of "a photo of a"; "of a" stays a fixed word
        assert torch.equal(model.ctx.detach(), ref.token_embedding(tokenizer(["a photo of a"]))[0, 1:3])
    # more slots than init words: the official code's random N(0, 0.02) context and "X" placeholders
    wide = build("maple", black_box, spec, depth=2, n_ctx=6)
    assert wide.ctx.abs().max() < 0.2 and (wide.ctx != 0).all()
    assert torch.equal(wide.tokens[0, 1:7], tokenizer(["X X X X X X"])[0, 1:7])
    with pytest.raises(LoreError, match="maple-depth"):
        build("maple", black_box, spec, depth=3)  # the tiny towers have 2 layers


def test_maple_language_prompts_follow_the_open_clip_text_path(black_box, spec) -> None:
    shallow = build("maple", black_box, spec, depth=1)  # J = 1: input prompts only
    with torch.no_grad():
        expected = build_zeroshot_features(spec)
        assert torch.allclose(shallow.text_features(), expected, atol=1e-5)
        deep = build("maple", black_box, spec, depth=2)
        base = deep.text_features()
        # the deep prompt of layer 1 replaces the context slots' layer-0 outputs
        ref, tokenizer = reference_clip(spec)
        tokens = tokenizer([f"a photo of a {n}." for n in NAMES])
        x = ref.token_embedding(tokens) + ref.positional_embedding
        x = ref.transformer.resblocks[0](x, attn_mask=ref.attn_mask)
        x = torch.cat([x[:, :1], deep.deep_text[0].expand(C, -1, -1), x[:, 3:]], dim=1)
        x = ref.ln_final(ref.transformer.resblocks[1](x, attn_mask=ref.attn_mask))
        by_hand = x[torch.arange(C), tokens.argmax(-1)] @ ref.text_projection
        assert torch.allclose(base, by_hand, atol=1e-5)


def test_maple_logits_and_gradients(black_box, spec, images) -> None:
    model = build("maple", black_box, spec, depth=2)
    with torch.no_grad():
        model.eval()
        pooled = black_box(images, model.vision_prompts()).pooled
        text = model.text_features()
        assert torch.allclose(model(images), 100 * F.normalize(pooled, dim=-1) @ F.normalize(text, dim=-1).t(),
                              atol=1e-4)
    model.train()
    loss, _, _ = model.training_loss(images, torch.tensor([0, 1, 2]))
    loss.sum().backward()
    assert grads(model) == {"ctx", "deep_text", "proj.weight", "proj.bias",
                            "deep_proj.0.weight", "deep_proj.0.bias"}
    assert not any(k.startswith(("text_tower.", "black_box.")) for k in model.trainable_state_dict())


# --------------------------------------------------------------------------- shared behaviour


@pytest.mark.parametrize("method", ["cocoop", "prograd", "maple"])
def test_refuses_a_backbone_without_a_text_tower(method: str, spec: str, tmp_path: Path, capsys) -> None:
    vit = build_black_box("vit_small_patch16_224", pretrained=False,
                          backbone_args="img_size=32,patch_size=8,depth=1,embed_dim=64,num_heads=2")
    with pytest.raises(LoreError, match="needs a CLIP backbone"):
        build_model(method, vit, C, classnames=NAMES, text_tower=spec)
    from lore.cli import main
    # refused before the data is looked at (it does not exist) or anything is built
    rc = main(["train", "--method", method, "--backbone", "vit_small_patch16_224", "--no-pretrained",
               "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "run"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "needs a CLIP backbone" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("method,options", [("cocoop", {}), ("prograd", {"n_ctx": 4}), ("maple", {"depth": 2})])
def test_saved_run_reloads_to_identical_logits(method, options, spec, images, tmp_path: Path) -> None:
    torch.manual_seed(5)
    model = build_model(method, BACKBONE, C, pretrained=False, backbone_args=BACKBONE_ARGS, classnames=NAMES,
                        text_tower=spec, **options)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    save_model(tmp_path, model, {"backbone": BACKBONE, "pretrained": False, "checkpoint": None,
                                 "backbone_args": BACKBONE_ARGS, "backbone_init_seed": 5})
    again, _ = load_run(tmp_path)
    assert again.method == method
    with torch.no_grad():
        assert torch.equal(again.eval()(images), model.eval()(images))


# the harness on the colour dataset: few-shot sampling, training, evaluation, run directory, reload
LEARNS = {
    "cocoop": ["--epochs", "30", "--lr", "0.3"],
    "prograd": ["--epochs", "30", "--lr", "0.01", "--coop-ctx", "4", "--coop-csc"],
    "maple": ["--epochs", "30", "--lr", "0.001", "--maple-depth", "2"],
}


@pytest.fixture
def one_thread():
    """Training numerics independent of the machine's thread count (and fast on a busy one)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("method", sorted(LEARNS))
def test_learns_on_the_colour_dataset_through_the_harness(method: str, spec: str, tmp_path: Path, one_thread) -> None:
    from lore.cli import main
    from lore.synthetic.colors import write_imagefolder

    data = write_imagefolder(tmp_path / "colors", n_train=16, n_test=12)
    out = tmp_path / "run"
    rc = main(["train", "--method", method, "--backbone", BACKBONE, "--no-pretrained",
               "--backbone-args", BACKBONE_ARGS, "--knowledge", spec, "--data", str(data),
               "--shots", "16", "--seed", "3", "--batch-size", "16", "--img-size", "32", "--aug", "none",
               "--wd", "0", "--workers", "0", "--device", "cpu", "--out", str(out), *LEARNS[method]])
    assert rc == 0
    final = json.loads((out / "final.json").read_text())
    assert final["test_samples"] == 12 * C
    assert final["test_acc1"] >= 0.6, final  # chance: 0.25
    meta = json.loads((out / "model.json").read_text())
    assert meta["method"] == method and meta["options"]["classnames"] == NAMES
    model, _ = load_run(out)
    assert model.method == method
    assert main(["eval", "--run", str(out), "--workers", "0", "--device", "cpu"]) == 0
    again = json.loads((out / "eval_test.json").read_text())
    assert again["acc1"] == pytest.approx(final["test_acc1"])


def test_dry_run_counts_maple_on_clip_b16_as_published(tmp_path: Path) -> None:
    from lore.cli import main

    rc = main(["train", "--dry-run", "--method", "maple", "--backbone", BACKBONE, "--num-classes", "100",
               "--img-size", "32", "--out", str(tmp_path)])
    assert rc == 0
    summary = json.loads((tmp_path / "model_summary.json").read_text())
    assert summary["trainable_params"] == 3_555_072  # the paper: 3.55M


def test_config_options_reach_each_method() -> None:
    from lore.config import make
    from lore.models.coop import text_side_options

    # each method's official context init: CoOp random, the others "a photo of a"
    assert text_side_options(make({"method": "coop"})) == {"n_ctx": 16, "csc": False, "ctx_init": None}
    assert text_side_options(make({"method": "cocoop", "cocoop_ctx": 6})) == {"n_ctx": 6, "ctx_init": "a photo of a"}
    assert text_side_options(make({"method": "maple"})) == {"n_ctx": 2, "depth": 9, "ctx_init": "a photo of a"}
    prograd = text_side_options(make({"method": "prograd", "prograd_lambda": 0.8}))
    assert prograd == {"n_ctx": 16, "csc": False, "lam": 0.8, "ctx_init": "a photo of a"}
    # like the reference, ProGrad's context starts from the words of its zero-shot template
    assert text_side_options(make({"method": "prograd", "template": "a texture of {}."}))["ctx_init"] == "a texture of"
    # --ctx-init: "" = random init (the official Co-CoOp c8 / c16 configurations), "_" = space
    assert text_side_options(make({"method": "cocoop", "cocoop_ctx": 16, "ctx_init": ""}))["ctx_init"] is None
    assert text_side_options(make({"method": "coop", "ctx_init": "a_photo_of_a"}))["ctx_init"] == "a photo of a"


def test_prograd_context_follows_the_official_word_count(black_box, spec, zeroshot_text) -> None:
    """ProGrad's official code pads its 16 context slots by words: "a type of flower, a photo of
    a" (8 words, 9 tokens: the comma is one) gives 8 zero slots and the first 8 init tokens; the
    last "a" stays a fixed word after the context."""
    from lore.models.coop import token_embedding

    clip_model, tokenizer = reference_clip(spec)
    model = build("prograd", black_box, spec, knowledge=zeroshot_text, n_ctx=16,
                  ctx_init="a type of flower, a photo of a")
    init = tokenizer(["a type of flower, a photo of a"])[0]
    init = init[1:int((init != 0).sum()) - 1]  # the 9 word tokens
    assert len(init) == 9
    assert torch.equal(model.ctx[:8], torch.zeros_like(model.ctx[:8]))
    assert torch.equal(model.tokens[0, 9:17], init[:8])
    assert model.tokens[0, 17] == init[8]  # "a": the suffix's first token, not learnt
    with torch.no_grad():
        assert torch.allclose(model.ctx[8:], token_embedding(clip_model)(init[:8]))


def test_prograd_teacher_and_context_come_from_its_dataset_template() -> None:
    from lore.config import make
    from lore.data.catalog import prograd_templates, zeroshot_templates
    from lore.models.coop import text_side_options

    assert prograd_templates("flowers") == ["a type of flower, a photo of a {}."]
    assert prograd_templates("dtd") == ["a texture of {}."]
    assert prograd_templates("dogs") == zeroshot_templates("dogs")  # not in ProGrad's list
    options = text_side_options(make({"method": "prograd", "dataset": "dtd"}))
    assert options["ctx_init"] == "a texture of"
    assert text_side_options(make({"method": "prograd", "dataset": "cifar10"}))["ctx_init"] == "a photo of a"
