"""Issue 2: the Black Box, data formats, few-shot sampling, training harness and run directories."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import TINY, TINY_BACKBONE, lore_cli
from lore.backbone import build_black_box
from lore.checkpoint import load_run
from lore.data import few_shot_indices, load_dataset
from lore.models import build_model


# --------------------------------------------------------------------------- Black Box


@pytest.mark.parametrize("name,args", [
    ("vit_small_patch16_224", TINY),
    ("vit_base_patch16_clip_quickgelu_224.openai", TINY + ",num_classes=32"),  # CLIP: pre-norm + projection head
    ("vit_small_patch14_reg4_dinov2", "img_size=28,depth=2,embed_dim=64,num_heads=2"),  # registers
])
def test_zero_prompt_features_equal_timm(name, args):
    torch.manual_seed(0)
    bb = build_black_box(name, pretrained=False, backbone_args=args)
    size = bb.vit.patch_embed.img_size[0]
    x = torch.randn(2, 3, size, size)
    out = bb(x)
    ref = bb.vit.forward_features(x)
    npre = bb.vit.num_prefix_tokens
    assert torch.equal(out.cls, ref[:, 0])
    assert torch.equal(out.patches.flatten(1, 2), ref[:, npre:])
    assert torch.allclose(out.pooled, bb.vit.forward_head(ref), atol=1e-6)


def test_deep_prompts_replace_every_layer():
    torch.manual_seed(0)
    bb = build_black_box("vit_small_patch16_224", pretrained=False, backbone_args=TINY + ",depth=3")
    P, D = 3, bb.embed_dim
    prompts = torch.randn(2, bb.depth, P, D)
    seen = {}
    hooks = [blk.register_forward_pre_hook(lambda m, inp, i=i: seen.__setitem__(i, inp[0].clone()))
             for i, blk in enumerate(bb.vit.blocks)]
    out = bb(torch.randn(2, 3, 32, 32), prompts)
    for h in hooks:
        h.remove()
    npre = bb.num_prefix
    assert out.num_prompts == P and out.patches.shape == (2, 4, 4, D)
    for i in range(bb.depth):  # the slots hold exactly layer i's prompts (norm_pre is identity here)
        assert torch.equal(seen[i][:, npre:npre + P], prompts[:, i]), f"layer {i}"
    # shallow prompts are only inserted once: layer 1 sees block-0 outputs at the slots
    seen.clear()
    hooks = [blk.register_forward_pre_hook(lambda m, inp, i=i: seen.__setitem__(i, inp[0].clone()))
             for i, blk in enumerate(bb.vit.blocks)]
    bb(torch.randn(2, 3, 32, 32), prompts[:, :1])
    assert not torch.equal(seen[1][:, npre:npre + P], prompts[:, 0])
    for h in hooks:
        h.remove()


def test_prompts_change_features_and_backbone_stays_frozen():
    torch.manual_seed(0)
    model = build_model("vpt-deep", "vit_small_patch16_224", 4, pretrained=False, backbone_args=TINY)
    assert all(not p.requires_grad for p in model.black_box.parameters())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"global_prompts.tokens", "head.weight", "head.bias"}
    model.train()
    assert not model.black_box.vit.training  # frozen weights keep eval mode: no dropout


# --------------------------------------------------------------------------- data


def test_formats_load_the_same_samples(colors, tmp_path):
    from lore.synthetic.colors import write_other_formats

    ref = load_dataset(str(colors), "imagefolder")
    paths = write_other_formats(colors, tmp_path)
    for fmt, root in paths.items():
        image_dir = str(colors)
        got = load_dataset(str(root), fmt, image_dir=image_dir)
        assert got.classnames == ref.classnames, fmt
        for split in ("train", "test"):
            assert sorted(got.splits[split]) == sorted(ref.splits[split]), (fmt, split)
    assert ref.classnames == ["blue", "green", "red", "yellow"]
    assert len(ref.splits["train"]) == 48 and len(ref.splits["test"]) == 24


def test_few_shot_is_deterministic_and_balanced():
    labels = np.repeat(np.arange(5), [7, 9, 4, 12, 6])
    a = few_shot_indices(labels, 3, seed=1)
    b = few_shot_indices(labels, 3, seed=1)
    c = few_shot_indices(labels, 3, seed=2)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.bincount(labels[a]).tolist() == [3] * 5
    assert len(set(a.tolist())) == 15


def test_shots_are_recorded(colors, tmp_path):
    out = tmp_path / "run"
    assert lore_cli("train", "--method", "linear", *TINY_BACKBONE, "--data", colors, "--out", out,
                    "--epochs", "1", "--batch-size", "8", "--shots", "2", "--seed", "5") == 0
    chosen = json.loads((out / "fewshot.json").read_text())
    assert len(chosen["files"]) == 8 and sorted(np.bincount(chosen["labels"]).tolist()) == [2, 2, 2, 2]
    assert all(Path(f).is_file() for f in chosen["files"])


# --------------------------------------------------------------------------- training


@pytest.mark.parametrize("method", ["linear", "vpt-shallow", "vpt-deep"])
def test_methods_learn_colours(method, colors, tmp_path):
    out = tmp_path / method
    torch.manual_seed(1993)  # the run's seed: a random-init backbone is built the same way
    bb = build_black_box("vit_small_patch16_224", pretrained=False, backbone_args=TINY)
    code = lore_cli("train", "--method", method, *TINY_BACKBONE, "--data", colors, "--out", out,
                    "--epochs", "20", "--batch-size", "16", "--lr", "0.05", "--min-lr", "0.001")
    assert code == 0
    final = json.loads((out / "final.json").read_text())
    assert final["test_acc1"] >= 0.9, final
    assert final["test_samples"] == 24
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == list(range(1, 21))
    assert {"epoch", "lr", "loss", "train_acc", "seconds"} <= set(lines[0])
    assert lines[-1]["loss"] < lines[0]["loss"]
    assert (out / "config.yaml").is_file() and "method: " + method in (out / "config.yaml").read_text()

    # the checkpoint holds no backbone tensor, and the backbone did not move
    state = load_file(str(out / "checkpoint.safetensors"))
    assert state and not any(k.startswith("black_box") for k in state)
    model, meta = load_run(out)
    for (k, v), (k2, v2) in zip(bb.state_dict().items(), model.black_box.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    assert final["trainable_params"] == sum(v.numel() for v in state.values())

    # reloading predicts exactly what evaluation measured
    assert lore_cli("eval", "--run", out, "--workers", "0") == 0
    again = json.loads((out / "eval_test.json").read_text())
    assert again["acc1"] == final["test_acc1"]


def test_reload_gives_identical_logits(colors, tmp_path):
    out = tmp_path / "run"
    assert lore_cli("train", "--method", "vpt-deep", *TINY_BACKBONE, "--data", colors, "--out", out,
                    "--epochs", "1", "--batch-size", "16") == 0
    a, _ = load_run(out)
    b, _ = load_run(out)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_config_file_and_cli_precedence(colors, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 1\nbatch_size: 8\nlr: 0.01\nmethod: vpt-deep\n")
    out = tmp_path / "run"
    assert lore_cli("train", "--config", cfg, "--method", "linear", *TINY_BACKBONE, "--data", colors,
                    "--out", out) == 0
    import yaml
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["method"] == "linear" and resolved["lr"] == 0.01 and resolved["batch_size"] == 8


# --------------------------------------------------------------------------- bad input


def _corrupt_dataset(colors: Path, tmp: Path) -> Path:
    import shutil
    root = tmp / "corrupt"
    shutil.copytree(colors, root)
    (root / "train" / "red" / "red_train_000.png").write_bytes(b"not an image at all")
    return root


def _empty_class(colors: Path, tmp: Path) -> Path:
    import shutil
    root = tmp / "empty"
    shutil.copytree(colors, root)
    (root / "train" / "purple").mkdir()
    return root


def _other_arch_checkpoint(tmp: Path) -> Path:
    torch.manual_seed(0)
    other = build_black_box("vit_small_patch16_224", pretrained=False,
                            backbone_args="img_size=32,patch_size=8,depth=3,embed_dim=96,num_heads=2")
    path = tmp / "other.safetensors"
    save_file({k: v.contiguous() for k, v in other.vit.state_dict().items()}, str(path))
    return path


BAD = {
    "missing data path": (lambda c, t: ["--data", t / "nope"], "no such file"),
    "unknown backbone": (lambda c, t: ["--data", c, "--backbone", "vit_nonexistent_model"], "unknown backbone"),
    "empty class folder": (lambda c, t: ["--data", _empty_class(c, t)], "has no images"),
    "corrupt image": (lambda c, t: ["--data", _corrupt_dataset(c, t)], "cannot decode image"),
    "checkpoint of another architecture": (
        lambda c, t: ["--data", c, "--checkpoint", _other_arch_checkpoint(t)], "does not fit backbone"),
    "too many shots": (lambda c, t: ["--data", c, "--shots", "50"], "--shots 50"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_clear_line(case, colors, tmp_path, capsys):
    make, expected = BAD[case]
    extra = make(colors, tmp_path)
    args = ["train", "--method", "linear", *TINY_BACKBONE, "--out", tmp_path / "out", "--epochs", "1",
            "--batch-size", "8", *extra]
    assert lore_cli(*args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("lore: error:") and expected in err[-1], err
    assert "Traceback" not in "\n".join(err)


def test_bad_input_in_a_subprocess_has_no_traceback(colors, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "lore", "train", "--method", "linear", *TINY_BACKBONE,
                           "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"lore: error: --data {tmp_path / 'missing'}: no such file or directory"]


def test_method_lore_without_knowledge_file_is_clear(colors, tmp_path, capsys):
    code = lore_cli("train", "--method", "lore", *TINY_BACKBONE, "--data", colors, "--out",
                    tmp_path / "o", "--knowledge", "file:" + str(tmp_path / "none.npy"))
    assert code == 2 and "file not found" in capsys.readouterr().err
