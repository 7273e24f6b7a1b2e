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

The pieces here (the frozen :class:`TextTower`, :func:`class_prompts`) are shared by the other
prompt learners on CLIP's text side: Co-CoOp, ProGrad and MaPLe.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..backbone import CLIP_LOGIT_SCALE, BlackBox
from ..errors import LoreError
from ..knowledge import load_open_clip
from ..values import opt
from .registry import register
from .base import AdaptedViT, require_clip
from .clip_adapter import image_embedding

CONTEXT_PLACEHOLDER = "X"
# the context init of Co-CoOp, MaPLe and ProGrad in their official configurations
CTX_INIT = "a photo of a"


def open_clip_arg(spec: str) -> str:
    """``clip:MODEL/TAG`` -> ``MODEL/TAG`` for :func:`load_open_clip`."""
    kind, _, arg = spec.partition(":")
    if kind != "clip" or not arg:
        raise LoreError(f"this method needs a CLIP text tower (--knowledge clip:MODEL/TAG), got {spec!r}")
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
            raise LoreError(f"the text tower {type(src).__name__} is not a plain CLIP "
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

    def forward(self, x: torch.Tensor, tokens: torch.Tensor, deep: torch.Tensor | None = None,
                slots: slice = slice(1, 1)) -> torch.Tensor:
        """Token embeddings (N, L, w) + their token ids (N, L, for EOS pooling) -> (N, d).

        ``deep`` (J-1, n, w): prompts that replace the ``slots`` positions before layers 1..J-1
        (MaPLe's deep language prompts); after layer J-1 the slot outputs flow on unchanged.
        """
        from open_clip.transformer import text_global_pool  # open_clip loads only when CoOp is used

        x, tokens, mask = self._trim(x, tokens)
        x = x + self.positional_embedding[:x.shape[1]].to(x.dtype)
        if deep is None:
            x = self.transformer(x, attn_mask=mask)
        else:
            x = self._deep(x, mask, deep, slots)
        x = self.ln_final(x)
        x = text_global_pool(x, tokens, self.pool_type, eos_token_id=self.eos_id)
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        return x @ self.text_projection if self.text_projection is not None else x

    def _trim(self, x: torch.Tensor, tokens: torch.Tensor):
        """Drop the padding after the last EOS: under the causal mask no earlier position sees it,
        so the pooled EOS feature is unchanged and short prompts cost a fraction of 77 tokens."""
        mask = self.attn_mask
        # a traced graph cannot depend on the EOS positions; untrimmed gives the same features
        if mask is None or self.pool_type not in ("argmax", "eos") or torch.compiler.is_exporting():
            return x, tokens, mask
        eos = tokens.argmax(dim=-1) if self.pool_type == "argmax" else (tokens == self.eos_id).int().argmax(dim=-1)
        keep = int(eos.max()) + 1
        return x[:, :keep], tokens[:, :keep], mask[:keep, :keep]

    def _deep(self, x: torch.Tensor, mask: torch.Tensor | None, deep: torch.Tensor, slots: slice) -> torch.Tensor:
        batch_first = getattr(self.transformer, "batch_first", True)
        deep = deep.to(x.dtype)
        for i, block in enumerate(self.transformer.resblocks):
            if 0 < i <= deep.shape[0]:
                prompt = deep[i - 1].expand(x.shape[0], -1, -1)
                x = torch.cat([x[:, :slots.start], prompt, x[:, slots.stop:]], dim=1)
            if batch_first:
                x = block(x, attn_mask=mask)
            else:  # older open_clip runs its blocks sequence-first
                x = block(x.transpose(0, 1), attn_mask=mask).transpose(0, 1)
        return x

    @property
    def layers(self) -> int:
        return len(self.transformer.resblocks)

    @property
    def width(self) -> int:
        return self.positional_embedding.shape[-1]


def token_embedding(clip_model: nn.Module) -> nn.Module:
    return getattr(clip_model, "text", clip_model).token_embedding


def class_prompts(clip_model: nn.Module, tokenizer, classnames: list[str], n_ctx: int,
                  ctx_init: str | None, method: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                              torch.Tensor | None]:
    """Tokens (C, L), the frozen embeddings around the context slots 1..n_ctx (prefix (C, 1, w),
    suffix (C, L-1-n_ctx, w)) and the initial context (n_ctx, w) (None: random init).

    ``ctx_init`` (e.g. "a photo of a") puts those words before every class name. With at least
    n_ctx words the first n_ctx tokens become the context (Co-CoOp, MaPLe: the rest stay fixed
    words); with fewer, zero slots come first, one per missing word (ProGrad).
    """
    if ctx_init:
        # words, not tokens, as ProGrad's official code counts them: "a type of flower, a photo of
        # a" (8 words, 9 tokens) in 16 slots gives 8 zero slots, 8 init tokens and a fixed "a"
        lead = max(n_ctx - len(ctx_init.split()), 0)
        text = " ".join([CONTEXT_PLACEHOLDER] * lead + [ctx_init])
    else:
        text = " ".join([CONTEXT_PLACEHOLDER] * n_ctx)
    prompts = [f"{text} {name.replace('_', ' ')}." for name in classnames]
    tokens = tokenizer(prompts)
    head = tokenizer([text])[0]
    n_head = int((head != 0).sum()) - 2
    if n_head < n_ctx or not (tokens[:, 1:1 + n_head] == head[1:1 + n_head]).all():
        raise LoreError(f"--method {method}: the text tower's tokenizer does not give {n_ctx} context "
                        f"tokens before the class names within its {tokens.shape[1]}-token window")
    # a context that fills the window truncates the class names away: every class would get the
    # same text feature, and the model would train and test without a word of error
    names = tokenizer([f"{name.replace('_', ' ')}." for name in classnames])
    longest = int((names != 0).sum(dim=1).max()) - 2
    if n_head + longest + 2 > tokens.shape[1]:
        raise LoreError(f"--method {method}: the context ({n_head} tokens{', --ctx-init' if ctx_init else ''})"
                        f" leaves no room for the class names ({longest} tokens for the longest) in the "
                        f"text tower's {tokens.shape[1]}-token window; use a shorter --ctx-init or fewer "
                        "context tokens")
    with torch.no_grad():
        embedded = token_embedding(clip_model)(tokens)
    init = None
    if ctx_init:
        init = embedded[0, 1:1 + n_ctx].clone()
        init[:lead] = 0.0
    return tokens, embedded[:, :1].clone(), embedded[:, 1 + n_ctx:].clone(), init


class ClassTextHead:
    """Mixin of the prompt learners that classify by 100 * cos(image, class text feature).

    At inference the learnt text parameters are fixed, so the classes are encoded once and kept
    until one of ``text_parameters()`` changes (optimizer steps and load_state_dict bump a
    parameter's version counter). The frozen text tower is never saved: it comes back from its
    spec, like the frozen image tower."""

    _cache: tuple[tuple, torch.Tensor] | None = None

    def text_parameters(self) -> tuple[torch.Tensor, ...]:
        return (self.ctx,)

    def _class_features(self) -> torch.Tensor:
        if torch.compiler.is_exporting() and self._cache is not None:
            return self._cache[1]  # baked into the exported graph as a constant (no text tower)
        if self.training or torch.is_grad_enabled():
            return self.text_features()
        key = tuple((p._version, p.data_ptr(), p.device) for p in self.text_parameters())
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self.text_features())
        return self._cache[1]

    def train(self, mode: bool = True):
        super().train(mode)
        if not mode:  # entering eval: encode the classes now, not as part of the first image's cost
            with torch.no_grad():
                self._class_features()
        return self

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, d) image embeddings -> (B, C) logits, 100 * cos(image, class text feature)."""
        text = self._class_features()
        return CLIP_LOGIT_SCALE * F.normalize(x, dim=-1) @ F.normalize(text, dim=-1).to(x.dtype).t()

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in super().trainable_state_dict().items() if not k.startswith("text_tower.")}


class CoOp(ClassTextHead, AdaptedViT):
    method = "coop"

    def __init__(self, black_box: BlackBox, num_classes: int, classnames: list[str], text_tower: str,
                 n_ctx: int = 16, csc: bool = False, ctx_init: str | None = None, **extra):
        require_clip(black_box, self.method)
        if len(classnames) != num_classes:
            raise LoreError(f"--method {self.method}: {len(classnames)} class names for {num_classes} classes")
        if n_ctx < 1:
            raise LoreError(f"--method {self.method}: the context length must be >= 1, got {n_ctx}")
        options = dict(n_ctx=n_ctx, csc=csc, classnames=list(classnames), text_tower=text_tower)
        if ctx_init is not None:
            options["ctx_init"] = ctx_init
        super().__init__(black_box, num_classes, nn.Identity(), **options, **extra)
        clip_model, tokenizer = load_open_clip(open_clip_arg(text_tower))
        self.text_tower = TextTower(clip_model)
        width = self.text_tower.width
        tokens, prefix, suffix, init = class_prompts(clip_model, tokenizer, classnames, n_ctx, ctx_init,
                                                     self.method)
        # SOS and "classname . EOS pad" around the context slots: frozen, rebuilt from the spec
        self.register_buffer("tokens", tokens, persistent=False)
        self.register_buffer("token_prefix", prefix, persistent=False)
        self.register_buffer("token_suffix", suffix, persistent=False)
        shape = (num_classes, n_ctx, width) if csc else (n_ctx, width)
        self.ctx = nn.Parameter(init.expand(shape).clone() if init is not None else torch.randn(shape) * 0.02)
        if self.text_tower.out_dim != black_box.out_dim:
            raise LoreError(f"--method {self.method}: the text tower {text_tower} embeds into "
                            f"{self.text_tower.out_dim}-d but the "
                            f"image embedding is {black_box.out_dim}-d; use the backbone's own CLIP")

    def text_features(self) -> torch.Tensor:
        """(C, d) text features of all class prompts with the current context, one batched pass."""
        ctx = self.ctx if self.ctx.ndim == 3 else self.ctx.expand(self.num_classes, -1, -1)
        prefix, suffix = self.token_prefix.to(ctx.dtype), self.token_suffix.to(ctx.dtype)
        return self.text_tower(torch.cat([prefix, ctx, suffix], dim=1), self.tokens)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(image_embedding(self.black_box, images))


@dataclass
class CoOpOptions:
    """CoOp's options (ProGrad shares the context ones; the CoOp family shares --ctx-init)."""
    coop_ctx: int = opt(16, "CoOp: learnable context tokens", low=1)
    coop_csc: bool = opt(False, "CoOp: class-specific context")
    ctx_init: str | None = opt(None, "CoOp-family context init words ('' = random N(0, 0.02); default: the "
                               "method's own: CoOp random, Co-CoOp and MaPLe 'a photo of a', ProGrad its "
                               "template's words)")


def ctx_init(cfg, default: str | None) -> str | None:
    """--ctx-init: None = the method's own ``default``, "" = random N(0, 0.02); "_" reads as a
    space, as in the official code."""
    words = default if cfg.ctx_init is None else cfg.ctx_init
    return (words or "").replace("_", " ").strip() or None


def coop_options(cfg) -> dict:
    return dict(n_ctx=cfg.coop_ctx, csc=cfg.coop_csc, ctx_init=ctx_init(cfg, None))


@register("coop", config=CoOpOptions, order=6, text_side=True, options=coop_options, dry_run_knowledge=True, bench=True)
def _coop(black_box: BlackBox, num_classes: int, classnames: list[str] | None = None,
          text_tower: str | None = None, n_ctx: int = 16, csc: bool = False, ctx_init: str | None = None,
          **_) -> AdaptedViT:
    require_text_side(black_box, "coop", classnames, text_tower)
    return CoOp(black_box, num_classes, classnames, text_tower, n_ctx=n_ctx, csc=csc, ctx_init=ctx_init)


def require_text_side(black_box: BlackBox, method: str, classnames: list[str] | None, text_tower: str | None) -> None:
    """A CLIP image tower, the class names and a CLIP text tower spec, checked before any loading."""
    require_clip(black_box, method)
    if classnames is None or text_tower is None:
        raise LoreError(f"--method {method} needs the class names and a CLIP text tower "
                        "(options classnames=..., text_tower='clip:MODEL/TAG')")
    open_clip_arg(text_tower)


def text_side_options(cfg) -> dict:
    """The model options a TrainConfig gives a method that runs the CLIP text tower (CoOp, Co-CoOp,
    ProGrad, MaPLe): each declares them where it registers."""
    from .registry import get

    method = get(cfg.method)
    if not method.text_side:
        raise LoreError(f"--method {cfg.method} has no CLIP text-side options")
    return method.options(cfg)


def check_text_side(cfg) -> None:
    """Refuse a backbone without CLIP's image projection, or a non-CLIP --knowledge, before any
    data is read or model built (the same checks the constructors make on the built model)."""
    from ..backbone import has_clip_projection
    from ..knowledge import default_knowledge_spec

    if not cfg.checkpoint and not has_clip_projection(cfg.backbone):
        raise LoreError(f"--method {cfg.method} needs a CLIP backbone whose image embedding lives in the "
                        f"text space (e.g. vit_base_patch16_clip_quickgelu_224.openai), got {cfg.backbone}")
    open_clip_arg(cfg.knowledge or default_knowledge_spec(cfg.backbone))


def template_words(template: str | None) -> str | None:
    """The words before the class name of a one-sentence template ("a texture of {}." -> "a texture
    of"): ProGrad starts its context from the template its zero-shot classifier uses."""
    if not template or template.count("{}") != 1 or not template.rstrip().endswith("{}."):
        return None
    return template.rstrip()[:-3].strip() or None
