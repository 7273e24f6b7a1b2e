"""What the reference implementation computes around the White Box: QuickGELU CLIP towers, the
test-time crop, easy-to-hard herding, the default wrong class p, a float32 White Box under
autocast, the reference's train/eval quirk, and the cost conventions."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file

import lore.train as train_mod
from conftest import TINY, TINY_BACKBONE, lore_cli
from lore import config as config_mod
from lore.backbone import build_black_box, has_clip_projection
from lore.curriculum import herding_ranks, select_easy, select_hard
from lore.data import eval_transform
from lore.knowledge import clip_text_tower, default_knowledge_spec, load_open_clip
from lore.models import build_model
from lore.train import resolve_backbone_defaults, run_data_config

CLIP_B16 = "vit_base_patch16_clip_quickgelu_224.openai"


# --- 1. OpenAI CLIP runs with QuickGELU, image and text tower matched ---------------------------

def test_openai_clip_black_box_uses_quickgelu_and_gelu_request_warns():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the QuickGELU model warns about nothing
        bb = build_black_box(CLIP_B16, pretrained=False, backbone_args=TINY + ",num_classes=32")
    assert type(bb.vit.blocks[0].mlp.act).__name__ == "QuickGELU" and bb.is_clip
    with pytest.warns(UserWarning, match="vit_base_patch16_clip_quickgelu_224.openai"):
        gelu = build_black_box("vit_base_patch16_clip_224.openai", pretrained=False,
                               backbone_args=TINY + ",num_classes=32")
    assert type(gelu.vit.blocks[0].mlp.act).__name__ == "GELU"


def test_text_tower_matches_the_image_tower():
    assert clip_text_tower(CLIP_B16) == "ViT-B-16-quickgelu/openai"
    assert clip_text_tower("vit_base_patch32_clip_quickgelu_224.openai") == "ViT-B-32-quickgelu/openai"
    assert clip_text_tower("vit_large_patch14_clip_quickgelu_224.openai") == "ViT-L-14-quickgelu/openai"
    assert clip_text_tower("vit_large_patch14_clip_quickgelu_336.openai") == "ViT-L-14-336-quickgelu/openai"
    assert clip_text_tower("vit_base_patch16_clip_224.openai") == "ViT-B-16/openai"  # GELU with GELU
    # a supervised ViT gets CLIP B/16's text tower as knowledge encoder (the paper's choice)
    assert default_knowledge_spec("vit_base_patch16_224.augreg_in21k") == "clip:ViT-B-16-quickgelu/openai"
    model, _ = load_open_clip("ViT-B-16-quickgelu/none")
    acts = {type(m).__name__ for m in model.transformer.modules() if "GELU" in type(m).__name__}
    assert acts == {"QuickGELU"}


def test_clip_is_decided_by_the_resolved_weights_not_the_name():
    # timm resolves the bare name to an ImageNet fine-tuned classifier with a 1000-way head
    assert not has_clip_projection("vit_base_patch16_clip_224")
    assert has_clip_projection(CLIP_B16) and has_clip_projection("vit_base_patch16_clip_224.laion2b")
    bb = build_black_box("vit_base_patch16_clip_224", pretrained=False, backbone_args=TINY)
    assert not bb.is_clip and bb.out_dim == 64 and not isinstance(bb.vit.head, torch.nn.Linear)


# --- 2. the test-time transform -------------------------------------------------------------------

def test_clip_eval_transform_is_resize_224_center_crop_224():
    cfg = resolve_backbone_defaults(config_mod.make({"backbone": CLIP_B16, "method": "lore"}))
    assert cfg.crop_pct == 1.0
    vit = resolve_backbone_defaults(config_mod.make({"backbone": "vit_base_patch16_224.augreg_in21k"}))
    assert vit.crop_pct == 0.9  # the backbone's own
    assert "crop_pct: 1.0" in config_mod.to_yaml(cfg)
    bb = build_black_box(CLIP_B16, pretrained=False, backbone_args=TINY + ",num_classes=32")
    data_config = run_data_config(cfg, bb)
    # short side already 224: Resize(224) keeps the image, CenterCrop(224) takes columns 38..261
    column = (np.arange(300) * 0.85).astype(np.uint8)
    pixels = np.tile(column[None, :, None], (224, 1, 3))
    out = eval_transform(224, data_config)(Image.fromarray(pixels))
    mean, std = torch.tensor(data_config["mean"]), torch.tensor(data_config["std"])
    back = (out * std[:, None, None] + mean[:, None, None]) * 255
    expected = torch.from_numpy(column[38:262].astype(np.float32)).expand(224, -1)
    assert torch.allclose(back[0], expected, atol=1e-3)
    cropped = eval_transform(224, {**data_config, "crop_pct": 0.9})(Image.fromarray(pixels))
    assert not torch.allclose(cropped, out)


def test_flip_augmentation_is_the_reference_resize_center_crop_flip():
    """Most reference datasets train on Resize + CenterCrop + flip (RESISC45 / PatternNet resize to 256)."""
    from torchvision.transforms import functional as TF

    from lore.data import train_transform

    data_config = {"mean": (0.0,) * 3, "std": (1.0,) * 3, "interpolation": "bicubic", "crop_pct": 1.0,
                   "train_crop_pct": 224 / 256}
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8))
    expected = TF.to_tensor(TF.center_crop(TF.resize(image, 256, TF.InterpolationMode.BICUBIC), 224))
    torch.manual_seed(0)
    outs = [train_transform(224, data_config, "flip")(image) for _ in range(8)]
    assert all(torch.allclose(o, expected, atol=1e-6) or torch.allclose(o.flip(-1), expected, atol=1e-6)
               for o in outs)
    assert any(torch.allclose(o.flip(-1), expected, atol=1e-6) for o in outs)  # flips do happen


def test_an_unknown_pretrained_tag_is_one_error_line(capsys):
    assert lore_cli("train", "--dry-run", "--num-classes", "3", "--method", "linear", "--no-pretrained",
                    "--backbone", "vit_small_patch16_224.bogus") == 2
    err = capsys.readouterr().err
    assert err.startswith("lore: error:") and "bogus" in err and "Traceback" not in err


# --- 3. easy-to-hard as the reference runs it -----------------------------------------------------

def _reference_herding(features: np.ndarray) -> np.ndarray:
    """The reference code's loop for one class (ranks from 0, all samples ranked)."""
    D = features.T / np.linalg.norm(features.T, axis=0)
    mu = D.mean(axis=1)
    alpha, w, rank = np.zeros(D.shape[1]), mu.copy(), 0
    for _ in range(150_000):
        if (alpha != 0).sum() == D.shape[1]:
            break
        i = int(np.argmax(w @ D))
        if alpha[i] == 0:
            rank += 1
            alpha[i] = rank
        w = w + mu - D[:, i]
    return alpha.astype(int) - 1


def test_herding_picks_the_known_points():
    # one class: the point nearest the mean comes first, then the two that balance each other
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.1]])
    ranks = herding_ranks(feats, torch.zeros(4, dtype=torch.long))
    assert ranks[2] == 0 and set(ranks.tolist()) == {0, 1, 2, 3}
    # many classes at once equal the reference's per-class loop
    g = torch.Generator().manual_seed(0)
    feats, labels = torch.randn(90, 16, generator=g), torch.arange(90) % 4
    ranks = herding_ranks(feats, labels).numpy()
    for c in range(4):
        m = labels.numpy() == c
        assert np.array_equal(ranks[m], _reference_herding(feats.numpy()[m].astype(np.float64)))
    easy = select_easy(feats, labels, 3)
    assert np.bincount(labels[easy].numpy()).tolist() == [3, 3, 3, 3]
    assert (ranks[easy] < 3).all()


def test_stage_h_draws_only_misclassified_images_last_in_herding_order():
    g = torch.Generator().manual_seed(1)
    feats, labels = torch.randn(40, 8, generator=g), torch.arange(40) % 2
    wrong = torch.zeros(40, dtype=torch.bool)
    wrong[[0, 2, 4, 6, 8, 10, 1, 3]] = True  # class 0: six mistakes, class 1: two
    hard = select_hard(feats, labels, wrong, 4)
    assert wrong[hard].all()
    assert np.bincount(labels[hard].numpy()).tolist() == [4, 2]
    ranks = herding_ranks(feats, labels)
    class0 = [i for i in [0, 2, 4, 6, 8, 10]]
    expected = sorted(sorted(class0, key=lambda i: -ranks[i])[:4] + [1, 3])
    assert hard.tolist() == expected


# --- 4. the wrong class p never changes silently --------------------------------------------------

@pytest.mark.parametrize("backbone,expected", [(CLIP_B16, "zeroshot"),
                                               ("vit_base_patch32_clip_quickgelu_224.openai", "zeroshot"),
                                               ("vit_base_patch16_224.augreg_in21k", "model"),
                                               ("vit_base_patch16_clip_224", "model")])
@pytest.mark.parametrize("knowledge", [None, "file:k.npy", "sentence:all-MiniLM-L6-v2",
                                       "clip:ViT-B-16-quickgelu/openai"])
def test_default_negative_depends_on_the_backbone_only(backbone, expected, knowledge):
    cfg = resolve_backbone_defaults(config_mod.make({"backbone": backbone, "knowledge": knowledge}))
    assert cfg.negative == expected
    explicit = config_mod.make({"backbone": backbone, "knowledge": knowledge, "negative": "none"})
    assert resolve_backbone_defaults(explicit).negative == "none"


# --- 5. the White Box in float32 under autocast ---------------------------------------------------

def test_white_box_runs_float32_under_autocast(monkeypatch):
    import lore.whitebox.lin as lin_mod

    torch.manual_seed(0)
    model = build_model("lore", "vit_small_patch16_224", 4, pretrained=False, backbone_args=TINY,
                        knowledge=torch.randn(4, 24), negative="model", wb_norm="batch").train()
    seen = []
    real = lin_mod.knn_indices
    monkeypatch.setattr(lin_mod, "knn_indices", lambda x, k: seen.append((x.dtype, real(x, k))) or seen[-1][1])
    images, targets = torch.randn(6, 3, 32, 32), torch.arange(6) % 4
    e0 = model.black_box.embed(images)  # the frozen patch embedding; the ViT may run in bf16
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(1)  # the same dropout masks in both passes
    e_hat32, y32, u32 = model.white_box(e0)
    model.load_state_dict(state)  # the same BatchNorm statistics for the second pass
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        e_hat, y, u = model.white_box(e0)
        loss, _, terms = model.training_loss(images, targets, torch.arange(6))
    assert {dtype for dtype, _ in seen} == {torch.float32}
    assert torch.equal(seen[0][1], seen[1][1])  # the kNN graph equals float32's
    assert e_hat.dtype == y.dtype == u.dtype == torch.float32
    # autocast leaves the White Box untouched: the same numbers as the float32 pass
    assert torch.allclose(y, y32, atol=1e-6) and torch.allclose(u, u32, atol=1e-6)
    assert torch.isfinite(loss).all() and "kp" in terms


# --- 6. the reference's train/eval quirk ----------------------------------------------------------

@pytest.fixture(scope="module")
def marks(tmp_path_factory) -> Path:
    from lore.synthetic.marks import write_marks
    return write_marks(tmp_path_factory.mktemp("marks"), "ABCD", n_train=6, n_test=4, size=32)


def _train_and_watch(tmp_path, marks, bn_mode, monkeypatch):
    """Run 3 epochs; record the White Box BatchNorm statistics and dropout mode per epoch."""
    snapshots, dropout_training = [], []
    real_metrics = train_mod._epoch_metrics

    def spy(ctx, model, *args, **kwargs):
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()
                          if k.startswith(("lin.", "pg.")) and k.endswith("running_mean")})
        return real_metrics(ctx, model, *args, **kwargs)

    def watch_dropout(module, inputs):
        dropout_training.append(module.training)

    real_build = train_mod.build_from_config

    def build(*args, **kwargs):
        model = real_build(*args, **kwargs)
        for m in model.pg.modules():
            if isinstance(m, torch.nn.Dropout):
                m.register_forward_pre_hook(watch_dropout)
        return model

    monkeypatch.setattr(train_mod, "_epoch_metrics", spy)
    monkeypatch.setattr(train_mod, "build_from_config", build)
    knowledge = tmp_path / "k.safetensors"
    save_file({"embeddings": torch.randn(4, 24)}, str(knowledge))
    out = tmp_path / bn_mode
    assert lore_cli("train", "--method", "lore", *TINY_BACKBONE, "--data", marks, "--out", out,
                    "--knowledge", f"file:{knowledge}", "--epochs", "3", "--batch-size", "12",
                    "--bn-mode", bn_mode, "--wb-norm", "batch") == 0
    return snapshots, dropout_training, yaml.safe_load((out / "config.yaml").read_text())


def test_bn_mode_reference_freezes_statistics_after_epoch_one(marks, tmp_path, monkeypatch):
    snapshots, dropout, config = _train_and_watch(tmp_path, marks, "reference", monkeypatch)
    assert config["bn_mode"] == "reference" and config["negative"] == "model" and config["crop_pct"] == 0.9
    steps = 2  # 24 images at batch 12
    assert all(dropout[:steps]) and not any(dropout[steps:3 * steps])  # training forwards only
    for key in snapshots[0]:
        assert torch.equal(snapshots[0][key], snapshots[1][key]) and torch.equal(snapshots[1][key], snapshots[2][key])


def test_bn_mode_train_keeps_updating_statistics(marks, tmp_path, monkeypatch):
    snapshots, dropout, _ = _train_and_watch(tmp_path, marks, "train", monkeypatch)
    assert all(dropout[:6])
    key = next(iter(snapshots[0]))
    assert not torch.equal(snapshots[0][key], snapshots[1][key])


# --- 7. cost conventions --------------------------------------------------------------------------

def test_dry_run_states_both_trainable_shares_and_what_gflops_count(tmp_path, capsys):
    assert lore_cli("train", "--dry-run", "--method", "lore", "--backbone", CLIP_B16,
                    "--num-classes", "100", "--out", tmp_path) == 0
    summary = json.loads((tmp_path / "model_summary.json").read_text())
    assert summary["trainable_params"] == 9_123_876  # the reference's count at 100 classes
    assert round(summary["trainable_pct_clip"], 1) == 5.7  # the paper's 5.7 % (image + text towers)
    assert 9 < summary["trainable_pct_image_tower"] < 10
    assert "multiply-adds" in summary["gflops_count"]
    printed = capsys.readouterr().out
    assert "of CLIP image + text towers" in printed and "of image tower" in printed


def test_easy_to_hard_runs_for_a_method_without_wrong_class(marks, tmp_path):
    out = tmp_path / "linear-e2h"
    assert lore_cli("train", "--method", "linear", *TINY_BACKBONE, "--data", marks, "--out", out,
                    "--epochs", "1", "--batch-size", "8", "--curriculum", "easy-to-hard", "--shots", "2",
                    "--stage-h-epochs", "1") == 0
    final = json.loads((out / "final.json").read_text())
    assert set(final["stages"]) <= {"e", "h"} and "e" in final["stages"]


def test_paper_recipes_carry_the_reference_training_transform():
    from lore.recipes import lookup

    def recipe(dataset: str, method: str = "lore") -> dict:
        return lookup(dataset, method, CLIP_B16, 16)

    assert recipe("flowers")["aug"] == "flip" and "train_crop_pct" not in recipe("flowers")
    assert recipe("resisc45")["aug"] == "flip" and recipe("resisc45")["train_crop_pct"] == 0.875
    assert recipe("imagenet")["aug"] == "rrc-flip" and recipe("dogs")["aug"] == "rrc-flip"
    assert recipe("cifar100", "vpt-deep")["aug"] == "flip"  # the ablation compares like with like
