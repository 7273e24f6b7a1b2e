"""lore.backbone: the Black Box's prompt insertion equals timm and stays frozen."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY
from lore.backbone import build_black_box
from lore.models import build_model


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
