"""Co-CoOp (Zhou et al., CVPR 2022): CoOp's context made instance-conditional.

A small meta-net maps the (L2-normalised) CLIP image embedding x to a bias pi(x) added to every
context vector, so each image gets its own prompts:

    ctx_m(x) = ctx_m + pi(x),   pi = Linear(d, d/16) -> ReLU -> Linear(d/16, w)

(512 -> 32 -> 512 on ViT-B/16; 35,360 trainable parameters with 4 context tokens). The context
starts at the token embeddings of "a photo of a". Logits of image b: 100 * cos(x_b, t_c(x_b)).

Every image has its own class text features, so the frozen text tower runs on B * C prompts per
step; they go through it as one batch (split into chunks of at most ``text_batch`` prompts only to
bound memory), never a loop over images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..backbone import CLIP_LOGIT_SCALE, BlackBox
from ..errors import LoreError
from ..values import opt
from .registry import register
from .base import AdaptedViT
from .clip_adapter import image_embedding
from .coop import CTX_INIT, CoOp, ctx_init, require_text_side


class CoCoOp(CoOp):
    method = "cocoop"

    def __init__(self, black_box: BlackBox, num_classes: int, classnames: list[str], text_tower: str,
                 n_ctx: int = 4, ctx_init: str | None = CTX_INIT, text_batch: int = 8192):
        if text_batch < 1:
            raise LoreError(f"--method cocoop: text_batch must be >= 1, got {text_batch}")
        super().__init__(black_box, num_classes, classnames, text_tower, n_ctx=n_ctx, csc=False,
                         ctx_init=ctx_init, text_batch=text_batch)
        del self.options["csc"]  # always one shared context, conditioned per image
        self.text_batch = text_batch
        d, w = black_box.out_dim, self.text_tower.width
        self.meta_net = nn.Sequential(nn.Linear(d, d // 16), nn.ReLU(), nn.Linear(d // 16, w))

    def image_text_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, d) image embeddings -> (B, C, d) text features of the image-conditioned prompts."""
        B, C = x.shape[0], self.num_classes
        bias = self.meta_net(F.normalize(x, dim=-1))  # (B, w)
        ctx = (self.ctx.unsqueeze(0) + bias.unsqueeze(1)).to(bias.dtype)  # (B, n_ctx, w)
        prefix = self.token_prefix.to(ctx.dtype).expand(B, -1, -1, -1)  # (B, C, 1, w)
        suffix = self.token_suffix.to(ctx.dtype).expand(B, -1, -1, -1)
        prompts = torch.cat([prefix, ctx.unsqueeze(1).expand(-1, C, -1, -1), suffix], dim=2)
        prompts = prompts.reshape(B * C, *prompts.shape[2:])
        tokens = self.tokens.repeat(B, 1)
        if torch.compiler.is_exporting():  # one pass: the chunking would fix the exported batch size
            return self.text_tower(prompts, tokens).reshape(B, C, -1)
        feats = torch.cat([self.text_tower(prompts[i:i + self.text_batch], tokens[i:i + self.text_batch])
                           for i in range(0, B * C, self.text_batch)])
        return feats.reshape(B, C, -1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        text = F.normalize(self.image_text_features(x), dim=-1).to(x.dtype)
        return CLIP_LOGIT_SCALE * torch.einsum("bd,bcd->bc", F.normalize(x, dim=-1), text)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(image_embedding(self.black_box, images))

    def train(self, mode: bool = True) -> "CoCoOp":
        # no class features to cache: they depend on the image
        return AdaptedViT.train(self, mode)


@dataclass
class CoCoOpOptions:
    """Co-CoOp's options."""
    cocoop_ctx: int = opt(4, "Co-CoOp: learnable context tokens (initialised from 'a photo of a')", low=1)


@register("cocoop", config=CoCoOpOptions, order=7, text_side=True, bench=True,
          options=lambda cfg: dict(n_ctx=cfg.cocoop_ctx, ctx_init=ctx_init(cfg, CTX_INIT)))
def _cocoop(black_box: BlackBox, num_classes: int, classnames: list[str] | None = None,
            text_tower: str | None = None, n_ctx: int = 4, ctx_init: str | None = CTX_INIT,
            text_batch: int = 8192, **_) -> AdaptedViT:
    require_text_side(black_box, "cocoop", classnames, text_tower)
    return CoCoOp(black_box, num_classes, classnames, text_tower, n_ctx=n_ctx, ctx_init=ctx_init,
                  text_batch=text_batch)
