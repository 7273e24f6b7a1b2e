"""CoOp (Zhou et al., IJCV 2022): learnable context vectors in front of each class name, run through
the frozen CLIP text tower; logits = 100 * cos(image embedding, text feature of class c).

Prompt of class c: ``[SOS] [V]_1 ... [V]_M classname . [EOS]`` (class token at the end). The M
context vectors are shared by all classes (generic) or one set per class (``csc``), initialised
N(0, 0.02). Only they train.

The text tower runs inside every training step (that is CoOp), once for all classes in one batch.
It is frozen and comes from open_clip (``text_tower``: the ``clip:MODEL/TAG`` knowledge spec), so
it is rebuilt from that spec on reload and never stored in the checkpoint; the checkpoint holds the
context vectors only. At evaluation the class text features are computed once and cached until
the context vectors change.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..backbone import CLIP_LOGIT_SCALE, BlackBox
from ..errors import LoreError
from ..knowledge import load_open_clip
from . import register
from .base import AdaptedViT, require_clip
from .clip_adapter import image_embedding

CONTEXT_PLACEHOLDER = "X"


def open_clip_arg(spec: str) -> str:
    """``clip:MODEL/TAG`` -> ``MODEL/TAG`` for :func:`load_open_clip`."""
    kind, _, arg = spec.partition(":")
    if kind != "clip" or not arg:
        raise LoreError(f"--method coop needs a CLIP text tower (--knowledge clip:MODEL/TAG), got {spec!r}")
    return arg


def weightless(spec: str) -> str:
    """The same text-tower architecture without pre-trained weights (``--dry-run``: no download)."""
    arg = open_clip_arg(spec)
    name = arg if arg.endswith(".json") else arg.rpartition("/")[0] or arg
    return f"clip:{name}/none"


class TextTower(nn.Module):
    """The frozen open_clip text transformer, fed token *embeddings* instead of token ids."""

    def __init__(self, clip_model: nn.Module):
        super().__init__()
        # open_clip's CLIP keeps the text pieces on the model; CustomTextCLIP in ``.text``
        src = getattr(clip_model, "text", clip_model)
        missing = [a for a in ("token_embedding", "positional_embedding", "transformer", "ln_final")
                   if not hasattr(src, a)]
        if missing or getattr(src, "cls_emb", None) is not None or getattr(src, "use_pad_mask", False):
            raise LoreError(f"--method coop: the text tower {type(src).__name__} is not a plain CLIP "
                            "text transformer (causal mask, EOS pooling); use an OpenAI-style CLIP")
        self.transformer = src.transformer
        self.ln_final = src.ln_final
        self.positional_embedding = src.positional_embedding
        self.text_projection = src.text_projection
        self.pool_type: str = getattr(src, "pool_type", getattr(src, "text_pool_type", "argmax"))
        self.eos_id: int | None = getattr(src, "eos_id", getattr(src, "text_eos_id", None))
        self.register_buffer("attn_mask", src.attn_mask, persistent=False)
        self.requires_grad_(False)
        self.eval()

    @property
    def out_dim(self) -> int:
        proj = self.text_projection
        if isinstance(proj, nn.Linear):
            return proj.out_features
        return proj.shape[1] if proj is not None else self.positional_embedding.shape[-1]

    def train(self, mode: bool = True) -> "TextTower":
        return super().train(False)  # frozen: never in training mode

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Token embeddings (C, L, w) + their token ids (C, L, for EOS pooling) -> (C, d)."""
        from open_clip.transformer import text_global_pool  # open_clip loads only when CoOp is used

        x = x + self.positional_embedding.to(x.dtype)
        x = self.ln_final(self.transformer(x, attn_mask=self.attn_mask))
        x = text_global_pool(x, tokens, self.pool_type, eos_token_id=self.eos_id)
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        return x @ self.text_projection if self.text_projection is not None else x


class CoOp(AdaptedViT):
    method = "coop"

    def __init__(self, black_box: BlackBox, num_classes: int, classnames: list[str], text_tower: str,
                 n_ctx: int = 16, csc: bool = False):
        require_clip(black_box, self.method)
        if len(classnames) != num_classes:
            raise LoreError(f"--method coop: {len(classnames)} class names for {num_classes} classes")
        if n_ctx < 1:
            raise LoreError(f"--coop-ctx must be >= 1, got {n_ctx}")
        super().__init__(black_box, num_classes, nn.Identity(), n_ctx=n_ctx, csc=csc,
                         classnames=list(classnames), text_tower=text_tower)
        clip_model, tokenizer = load_open_clip(open_clip_arg(text_tower))
        self.text_tower = TextTower(clip_model)
        width = self.text_tower.positional_embedding.shape[-1]
        prompts = [" ".join([CONTEXT_PLACEHOLDER] * n_ctx) + " " + name.replace("_", " ") + "."
                   for name in classnames]
        tokens = tokenizer(prompts)
        placeholder = tokenizer([CONTEXT_PLACEHOLDER])[0, 1]
        if not (tokens[:, 1:1 + n_ctx] == placeholder).all():
            raise LoreError(f"--coop-ctx {n_ctx}: the text tower's tokenizer does not give one token "
                            f"per context slot within its {tokens.shape[1]}-token window")
        with torch.no_grad():
            embedded = clip_model.token_embedding(tokens) if not hasattr(clip_model, "text") \
                else clip_model.text.token_embedding(tokens)
        # SOS and "classname . EOS pad" around the context slots: frozen, rebuilt from the spec
        self.register_buffer("tokens", tokens, persistent=False)
        self.register_buffer("token_prefix", embedded[:, :1].clone(), persistent=False)
        self.register_buffer("token_suffix", embedded[:, 1 + n_ctx:].clone(), persistent=False)
        shape = (num_classes, n_ctx, width) if csc else (n_ctx, width)
        self.ctx = nn.Parameter(torch.randn(shape) * 0.02)
        self._cache: tuple[tuple, torch.Tensor] | None = None
        if self.text_tower.out_dim != black_box.out_dim:
            raise LoreError(f"--method coop: the text tower {text_tower} embeds into "
                            f"{self.text_tower.out_dim}-d but the "
                            f"image embedding is {black_box.out_dim}-d; use the backbone's own CLIP")

    def text_features(self) -> torch.Tensor:
        """(C, d) text features of all class prompts with the current context, one batched pass."""
        ctx = self.ctx if self.ctx.ndim == 3 else self.ctx.expand(self.num_classes, -1, -1)
        prefix, suffix = self.token_prefix.to(ctx.dtype), self.token_suffix.to(ctx.dtype)
        return self.text_tower(torch.cat([prefix, ctx, suffix], dim=1), self.tokens)

    def _class_features(self) -> torch.Tensor:
        # inference: the context is fixed, so encode the classes once (re-done when ctx changes:
        # optimizer steps and load_state_dict bump the parameter's version counter)
        if self.training or torch.is_grad_enabled():
            return self.text_features()
        key = (self.ctx._version, self.ctx.data_ptr(), self.ctx.device)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self.text_features())
        return self._cache[1]

    def train(self, mode: bool = True) -> "CoOp":
        super().train(mode)
        if not mode:  # entering eval: encode the classes now, not as part of the first image's cost
            with torch.no_grad():
                self._class_features()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = image_embedding(self.black_box, images)
        text = self._class_features()
        return CLIP_LOGIT_SCALE * F.normalize(x, dim=-1) @ F.normalize(text, dim=-1).to(x.dtype).t()

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        # the frozen text tower comes back from its spec, like the frozen image tower
        return {k: v for k, v in super().trainable_state_dict().items() if not k.startswith("text_tower.")}


@register("coop")
def _coop(black_box: BlackBox, num_classes: int, classnames: list[str] | None = None,
          text_tower: str | None = None, n_ctx: int = 16, csc: bool = False, **_) -> AdaptedViT:
    if classnames is None or text_tower is None:
        raise LoreError("--method coop needs the class names and a CLIP text tower "
                        "(options classnames=..., text_tower='clip:MODEL/TAG')")
    return CoOp(black_box, num_classes, classnames, text_tower, n_ctx=n_ctx, csc=csc)
