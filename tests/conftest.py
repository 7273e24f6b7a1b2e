"""Shared fixtures: a tiny random-init ViT and small generated datasets in real on-disk formats."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("TQDM_DISABLE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# the one tiny random-init ViT of the tests (timm kwargs), and with a 32-way timm head (which the
# backbone wrapper drops) for code that builds the model timm-style
TINY = "img_size=32,patch_size=8,depth=2,embed_dim=64,num_heads=2"
TINY_32 = TINY + ",num_classes=32"
# the one tiny random-init open_clip model: a 1-layer text tower, 32-d embedding
TINY_CLIP = {"embed_dim": 32,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
TINY_BACKBONE = ["--backbone", "vit_small_patch16_224", "--no-pretrained", "--backbone-args", TINY,
                 "--img-size", "32", "--workers", "0"]


def lore_cli(*args: str) -> int:
    """Run the CLI in-process; returns the exit status."""
    from lore.cli import main
    return main([str(a) for a in args])


@pytest.fixture(scope="session")
def colors(tmp_path_factory) -> Path:
    from lore.synthetic.colors import write_imagefolder
    return write_imagefolder(tmp_path_factory.mktemp("colors"))


@pytest.fixture(scope="session")
def knowledge_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("knowledge") / "k.npy"
    np.save(path, np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32))
    return path


def tiny_clip_spec(folder: Path, text_layers: int = 1) -> str:
    """A random-init open_clip config small enough for tests, as a ``clip:<json>/none`` spec (its
    file name is the model name open_clip registers, so each depth gets its own)."""
    import json

    config = {**TINY_CLIP, "text_cfg": {**TINY_CLIP["text_cfg"], "layers": text_layers}}
    path = folder / f"lore-tiny-text{text_layers}.json"
    path.write_text(json.dumps(config))
    return f"clip:{path}/none"


# a tiny CLIP image tower (random init) for the CLIP methods, and one short training run
TINY_CLIP_BACKBONE = ["--backbone", "vit_base_patch16_clip_quickgelu_224.openai", "--no-pretrained",
                      "--backbone-args", TINY_32, "--img-size", "32", "--workers", "0"]


def train_tiny(out: Path, data: Path, *extra: str, backbone=TINY_BACKBONE) -> Path:
    """A 2-shot, 2-epoch run of the tiny backbone; its run directory."""
    assert lore_cli("train", *backbone, "--data", data, "--shots", 2, "--epochs", 2, "--batch-size", 4,
                    "--device", "cpu", "--out", out, *extra) == 0
    return out


@pytest.fixture(scope="session")
def lore_run(colors, tmp_path_factory) -> Path:
    """A finished tiny LORE run (ngram knowledge) on the colours dataset."""
    return train_tiny(tmp_path_factory.mktemp("runs") / "lore", colors, "--method", "lore", "--knowledge", "ngram:16")


@pytest.fixture(scope="session")
def clip_spec(tmp_path_factory) -> str:
    return tiny_clip_spec(tmp_path_factory.mktemp("clip"))
