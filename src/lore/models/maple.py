"""MaPLe (Khattak et al., CVPR 2023): multi-modal prompt learning on both CLIP towers.

Language side: n_ctx learnable context vectors (2, initialised from the first tokens of
"a photo of a", so the prompt reads "[ctx_1 ctx_2] of a <class>.") in the text tower's input, and
J-1 further sets (N(0, 0.02)) that replace the same slots before text layers 1..J-1 (J = 9).

Vision side: no prompts of its own. The prompts of image layer j are produced from the language
prompts of layer j by a linear coupling function F_j (text width -> image width, 512 -> 768 on
ViT-B/16), inserted into the Black Box's input and replaced before image layers 1..J-1; after
layer J-1 they flow through both towers unchanged.

Trainable (ViT-B/16, J = 9, n_ctx = 2): context 2*512 + deep text prompts 8*2*512 + 9 couplings
9*(512*768 + 768) = 3,555,072. Like the reference code, the J-1 deep couplings start as copies of
one initialised linear layer. Logits: 100 * cos(image embedding with prompts, class text feature);
at evaluation the class text features are encoded once and cached until the prompts change.
"""

from __future__ import annotations

from dataclasses import dataclass

import copy

import torch
import torch.nn as nn

from ..backbone import BlackBox
from ..errors import LoreError
from ..knowledge import load_open_clip
from ..values import opt
from .registry import register
from .base import AdaptedViT
from .coop import CTX_INIT, ClassTextHead, TextTower, class_prompts, ctx_init, open_clip_arg, require_text_side


class MaPLe(ClassTextHead, AdaptedViT):
    method = "maple"

    def __init__(self, black_box: BlackBox, num_classes: int, classnames: list[str], text_tower: str,
                 n_ctx: int = 2, depth: int = 9, ctx_init: str | None = CTX_INIT):
        if len(classnames) != num_classes:
            raise LoreError(f"--method maple: {len(classnames)} class names for {num_classes} classes")
        if n_ctx < 1:
            raise LoreError(f"--maple-ctx must be >= 1, got {n_ctx}")
        super().__init__(black_box, num_classes, nn.Identity(), n_ctx=n_ctx, depth=depth, ctx_init=ctx_init,
                         classnames=list(classnames), text_tower=text_tower)
        clip_model, tokenizer = load_open_clip(open_clip_arg(text_tower))
        self.text_tower = TextTower(clip_model)
        if not 1 <= depth <= min(black_box.depth, self.text_tower.layers):
            raise LoreError(f"--maple-depth must be in [1, {min(black_box.depth, self.text_tower.layers)}] "
                            f"(the layers of both towers), got {depth}")
        if self.text_tower.out_dim != black_box.out_dim:
            raise LoreError(f"--method maple: the text tower {text_tower} embeds into "
                            f"{self.text_tower.out_dim}-d but the image embedding is {black_box.out_dim}-d; "
                            "use the backbone's own CLIP")
        w, D = self.text_tower.width, black_box.embed_dim
        # the official code starts from the init words only when they fill every slot, else random
        words = ctx_init if ctx_init and n_ctx <= len(ctx_init.split()) else None
        tokens, prefix, suffix, init = class_prompts(clip_model, tokenizer, classnames, n_ctx, words,
                                                     self.method)
        self.register_buffer("tokens", tokens, persistent=False)
        self.register_buffer("token_prefix", prefix, persistent=False)
        self.register_buffer("token_suffix", suffix, persistent=False)
        self.n_ctx, self.depth = n_ctx, depth
        self.ctx = nn.Parameter(init.clone() if init is not None else torch.randn(n_ctx, w) * 0.02)
        self.proj = nn.Linear(w, D)
        self.deep_text = nn.Parameter(torch.randn(depth - 1, n_ctx, w) * 0.02)
        coupling = nn.Linear(w, D)
        self.deep_proj = nn.ModuleList([copy.deepcopy(coupling) for _ in range(depth - 1)])

    def vision_prompts(self) -> torch.Tensor:
        """(1, J, n_ctx, D): the image-side prompts of layers 0..J-1, coupled from the language ones."""
        first = self.proj(self.ctx).unsqueeze(0)
        if not len(self.deep_proj):
            return first.unsqueeze(0)
        # the J-1 couplings applied at once: (J-1, n, w) x (J-1, w, D) + (J-1, 1, D)
        weight = torch.stack([f.weight for f in self.deep_proj]).transpose(1, 2)
        bias = torch.stack([f.bias for f in self.deep_proj]).unsqueeze(1)
        deep = torch.baddbmm(bias, self.deep_text.to(weight.dtype), weight)
        return torch.cat([first, deep.to(first.dtype)]).unsqueeze(0)

    def prompts(self, e0: torch.Tensor) -> torch.Tensor:
        return self.vision_prompts()

    def text_features(self) -> torch.Tensor:
        """(C, d) class text features with the language prompts of all J layers, one batched pass."""
        ctx = self.ctx.expand(self.num_classes, -1, -1)
        prefix, suffix = self.token_prefix.to(ctx.dtype), self.token_suffix.to(ctx.dtype)
        return self.text_tower(torch.cat([prefix, ctx, suffix], dim=1), self.tokens, deep=self.deep_text,
                               slots=slice(1, 1 + self.n_ctx))

    def text_parameters(self) -> tuple[torch.Tensor, ...]:
        return (self.ctx, self.deep_text)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        e0 = self.black_box.embed(images)
        return self.logits(self.black_box.forward_embed(e0, self.prompts(e0)).pooled)


@dataclass
class MaPLeOptions:
    """MaPLe's options."""
    maple_ctx: int = opt(2, "MaPLe: learnable context tokens per layer", low=1)
    maple_depth: int = opt(9, "MaPLe: prompted layers J of both towers", low=1)


def _maple_bench(black_box: BlackBox, num_classes: int) -> dict:
    return {"depth": min(9, black_box.depth)}  # the paper's J = 9, or every layer of a shallower tower


@register("maple", config=MaPLeOptions, order=9, text_side=True, bench=True, bench_options=_maple_bench,
          options=lambda cfg: dict(n_ctx=cfg.maple_ctx, depth=cfg.maple_depth, ctx_init=ctx_init(cfg, CTX_INIT)))
def _maple(black_box: BlackBox, num_classes: int, classnames: list[str] | None = None,
           text_tower: str | None = None, n_ctx: int = 2, depth: int = 9, ctx_init: str | None = CTX_INIT,
           **_) -> AdaptedViT:
    require_text_side(black_box, "maple", classnames, text_tower)
    return MaPLe(black_box, num_classes, classnames, text_tower, n_ctx=n_ctx, depth=depth, ctx_init=ctx_init)
