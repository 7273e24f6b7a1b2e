"""LORE: frozen Black Box + White Box (LIN -> PG prompts; KLA + L_kp during training only).

Inference path: E0 -> LIN -> PG -> [global prompts, locality prompts] -> ViT -> head. The patch
embedding E0 is computed once and shared by the White Box and the ViT.
Training adds: KLA on the rows of the true and wrong class, and L = L_task + lambda * L_kp.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from ..backbone import BlackBox
from ..errors import LoreError
from ..losses import kp_loss
from ..whitebox import KLA, LIN, PromptGenerator
from ..values import opt
from .registry import register
from .base import AdaptedViT, make_head
from .vpt import GlobalPrompts

NEGATIVES = ("zeroshot", "model", "probe", "none")


class LORE(AdaptedViT):
    """LORE: the frozen Black Box with global prompts and the White Box (LIN -> PG) generating
    locality-aware prompts; in training, KLA's K-L prototypes guide the PG through L_kp.

    Every option is passed explicitly: their defaults live in :class:`LOREOptions` only, and
    ``build_model("lore", ...)`` fills them from there as ``lore train`` does.

    ``negative`` says where the wrong class p of L_kp comes from: ``zeroshot`` (frozen zero-shot
    CLIP predictions handed over with :meth:`set_negatives`, the default on a CLIP backbone, as the
    reference), ``model`` (the current prediction, the default otherwise), ``probe`` (a fixed table
    from a linear probe on the frozen features, also via set_negatives) or ``none``.

    ``learn_knowledge``: with no knowledge matrix, learn a (num_classes, knowledge_dim) class
    embedding with the White Box instead (used by KLA in training only, as the frozen one).
    ``wb_norm``: LIN's and PG's normalisation (:mod:`lore.whitebox.norm`).
    """

    method = "lore"

    def __init__(self, black_box: BlackBox, num_classes: int, knowledge: torch.Tensor | None = None,
                 knowledge_dim: int | None = None, *, global_prompts: int, local_prompts: int,
                 lin_blocks: int, lin_k: int, lin_variant: str, kla_topn: int, kla_variant: str,
                 bottleneck: int, pg_dropout: float, kp: bool, kp_weight: float, negative: str,
                 wb_norm: str, learn_knowledge: bool = False):
        if negative not in NEGATIVES:
            raise LoreError(f"--negative {negative!r}: choose one of {NEGATIVES}")
        if learn_knowledge and knowledge is not None:
            raise LoreError("learn_knowledge replaces the knowledge matrix: pass one or the other")
        if kp and knowledge is None and knowledge_dim is None:
            raise LoreError("LORE with L_kp needs class knowledge (--knowledge) or --no-kp")
        knowledge_dim = int(knowledge.shape[1]) if knowledge is not None else knowledge_dim
        super().__init__(black_box, num_classes, make_head(black_box, num_classes),
                         knowledge_dim=knowledge_dim, global_prompts=global_prompts,
                         local_prompts=local_prompts, lin_blocks=lin_blocks, lin_k=lin_k,
                         lin_variant=lin_variant, kla_topn=kla_topn, kla_variant=kla_variant,
                         bottleneck=bottleneck, pg_dropout=pg_dropout, kp=kp, kp_weight=kp_weight,
                         negative=negative, wb_norm=wb_norm, learn_knowledge=learn_knowledge)
        D, L = black_box.embed_dim, black_box.depth
        self.global_prompts = GlobalPrompts(L, global_prompts, D) if global_prompts > 0 else None
        self.lin = LIN(D, k=lin_k, blocks=lin_blocks, variant=lin_variant, norm=wb_norm)
        self.pg = PromptGenerator(D, L, num_prompts=local_prompts, bottleneck=bottleneck, dropout=pg_dropout,
                                  norm=wb_norm)
        self.kla = KLA(D, knowledge_dim, topn=kla_topn, variant=kla_variant) if kp else None
        self.kp_weight = kp_weight
        self.negative = negative
        # Frozen, never saved: only the training step reads them.
        self.register_buffer("knowledge", knowledge.float() if knowledge is not None else None,
                             persistent=False)
        self.register_buffer("negatives", None, persistent=False)
        # N(0, 1) rows are nearly orthogonal in high dimension: distinct classes from the start
        self.class_embedding = (nn.Parameter(torch.randn(num_classes, knowledge_dim))
                                if learn_knowledge and kp else None)

    def class_knowledge(self) -> torch.Tensor | None:
        """The (C, d) knowledge rows KLA reads: the frozen matrix, or the learned one, L2-normalised."""
        if self.class_embedding is not None:
            return F.normalize(self.class_embedding, dim=-1)
        return self.knowledge

    takes_negatives = True

    @property
    def negative_source(self) -> str | None:
        return self.negative

    def knowledge_width(self) -> int | None:
        return self.kla.knowledge_dim if self.kla is not None else None

    def kla_module(self) -> nn.Module | None:
        return self.kla if self.kla is not None and self.class_knowledge() is not None else None

    def set_negatives(self, predictions: torch.Tensor) -> None:
        """Per-training-image wrong class p (e.g. zero-shot CLIP predictions), indexed by sample."""
        self.negatives = predictions.long().to(self.head_device())

    def head_device(self) -> torch.device:
        return next(self.head.parameters()).device

    def white_box(self, e0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """E0 (B, h, w, D) -> (E^ (B, N, D), Y (B, D), locality prompts U (B, L, n_loc, D)).

        Always float32, also under autocast (as the reference, whose White Box stays float32 beside a
        half-precision CLIP): the kNN graph, and the Prompt Generator's last BatchNorm, which
        normalises each output channel over the batch alone, amplify low-precision rounding."""
        with torch.autocast(e0.device.type, enabled=False):
            e_hat = self.lin(e0.flatten(1, 2).float())
            y, u = self.pg(e_hat)
        return e_hat, y, u

    def _prompts(self, u: torch.Tensor) -> torch.Tensor:
        if self.global_prompts is None:
            return u
        g = self.global_prompts().expand(u.shape[0], -1, -1, -1)
        return torch.cat([g.to(u.dtype), u], dim=2)

    def prompts(self, e0: torch.Tensor) -> torch.Tensor:
        return self._prompts(self.white_box(e0)[2])

    def training_loss(self, images, targets, index=None):
        e0 = self.black_box.embed(images)
        e_hat, y, u = self.white_box(e0)
        logits = self.head(self.black_box.forward_embed(e0, self._prompts(u)).pooled)
        task = F.cross_entropy(logits.float(), targets, reduction="none")
        terms = {"task": task.detach()}
        knowledge = self.class_knowledge()
        if self.kla is None or knowledge is None:
            return task, logits, terms
        wrong = self._wrong_class(logits, index)
        rows = targets[:, None] if wrong is None else torch.stack([targets, wrong], dim=1)
        with torch.autocast(e0.device.type, enabled=False):  # float32, like the rest of the White Box
            protos, _ = self.kla.forward_rows(e_hat, knowledge[rows].float(), grid_h=e0.shape[1])
        kp = kp_loss(y.float(), protos[:, 0].float(), None if wrong is None else protos[:, 1].float(),
                     targets, wrong, reduction="none")
        terms["kp"] = kp.detach()
        return task + self.kp_weight * kp, logits, terms

    def _wrong_class(self, logits: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor | None:
        """p: none; a fixed per-sample table when one was set (zero-shot CLIP, or easy-to-hard stage h's
        stage-e predictions); else the current model's own prediction."""
        if self.negative == "none":
            return None
        if self.negatives is not None and index is not None:
            return self.negatives[index]
        if self.negative in ("zeroshot", "probe"):
            raise RuntimeError(f"negative={self.negative!r} needs set_negatives() before training (lore train "
                               "sets it); build with negative='model' to take p from the current prediction")
        return logits.detach().argmax(dim=-1)

    def kla_attention(self, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """KLA attention of each image over its patches for one class each: (B, h, w)."""
        knowledge = self.class_knowledge()
        if self.kla is None or knowledge is None:
            raise LoreError("this LORE model has no KLA / knowledge (trained with --no-kp?)")
        e0 = self.black_box.embed(images)
        e_hat, _, _ = self.white_box(e0)
        attn = self.kla.attention(e_hat, knowledge[classes][:, None].to(e_hat.dtype),
                                  grid_h=e0.shape[1])
        return attn[:, 0].reshape(e0.shape[0], e0.shape[1], e0.shape[2])


@dataclass
class LOREOptions:
    """LORE's options (White Box, L_kp)."""
    kp: bool = opt(True, "use KLA and the K-L prototype loss (--no-kp: 'LORE w/o L_kp')")
    kp_weight: float = opt(0.1, "weight lambda of L_kp", low=0)
    local_prompts: int = opt(2, "generated locality-aware prompts per layer", low=0)
    lin_blocks: int = opt(1, "LIN blocks", low=0)
    lin_k: int = opt(9, "LIN neighbours per token", low=1)
    lin_variant: str = opt("vig", "LIN form", ["vig", "paper"])
    kla_topn: int = opt(9, "KLA keeps the top-N scores per class", low=1)
    kla_variant: str = opt("code", "KLA form", ["code", "paper"])
    bottleneck: int = opt(32, "prompt-generator bottleneck width r", low=1)
    pg_dropout: float = opt(0.1, "dropout on the generated prompts (the reference's 0.1)")
    # "layer" won the few-shot study (README, "When LORE wins"); --recipe paper keeps the reference's BatchNorm
    wb_norm: str = opt("layer", "normalisation inside LIN and PG: per-image LayerNorm/GroupNorm (default), the "
                       "reference's BatchNorm ('batch'; --recipe paper), or none", ["batch", "layer", "none"])
    negative: str | None = opt(None, "source of the wrong class p (default: zeroshot when the backbone has a "
                               "CLIP text tower, else model)",
                               ["zeroshot", "model", "probe", "none"])


def _lore_options(cfg) -> dict:
    from ..knowledge import learned_knowledge, learned_width

    learned = learned_knowledge(cfg.knowledge)
    return dict(global_prompts=cfg.global_prompts, local_prompts=cfg.local_prompts,
                lin_blocks=cfg.lin_blocks, lin_k=cfg.lin_k, lin_variant=cfg.lin_variant,
                kla_topn=cfg.kla_topn, kla_variant=cfg.kla_variant, bottleneck=cfg.bottleneck,
                pg_dropout=cfg.pg_dropout, kp=cfg.kp, kp_weight=cfg.kp_weight,
                negative=cfg.negative, wb_norm=cfg.wb_norm, learn_knowledge=cfg.kp and learned,
                # the width of a learned class embedding, or of --dry-run's stand-in knowledge
                knowledge_dim=learned_width(cfg.knowledge) if learned else cfg.knowledge_dim)


def _lore_needs_knowledge(cfg) -> bool:
    from ..knowledge import learned_knowledge

    return cfg.kp and not learned_knowledge(cfg.knowledge)


def _lore_sentences(cfg) -> list[str]:
    """--template, else the reference's knowledge sentence for a paper dataset, else lore's default."""
    from ..data.catalog import knowledge_template
    from ..knowledge import read_templates

    template = cfg.template
    if template is None and cfg.dataset:
        template = knowledge_template(cfg.dataset)
    return read_templates(template)


def default_negative(negative: str | None, clip: bool) -> str:
    """--negative, else the reference's choice: zero-shot CLIP when the backbone has a text tower."""
    return negative or ("zeroshot" if clip else "model")


def _lore_defaults(cfg, clip: bool) -> dict:
    return {"negative": default_negative(cfg.negative, clip)}


def _lore_describe(cfg) -> str:
    from ..knowledge import default_knowledge_spec

    knows = "none (--no-kp)" if not cfg.kp else cfg.knowledge or default_knowledge_spec(cfg.backbone)
    return (f"class knowledge {knows} (--knowledge); wrong class p from {cfg.negative!r} (--negative); "
            f"White Box norm {cfg.wb_norm!r} (--wb-norm), --bn-mode {cfg.bn_mode}; "
            f"test crop fraction {cfg.crop_pct} (--crop-pct)")


def _lore_bench(black_box: BlackBox, num_classes: int) -> dict:
    # p from the current prediction: the step costs the same as with a fixed table, which bench has not
    return {"knowledge": torch.nn.functional.normalize(torch.randn(num_classes, 512), dim=-1), "kp": True,
            "negative": "model"}


@register("lore", config=LOREOptions, order=100, options=_lore_options, needs_knowledge=_lore_needs_knowledge,
          templates=_lore_sentences, learned_knowledge=True, check_knowledge=True, defaults=_lore_defaults,
          describe=_lore_describe,
          aliases={"lore-no-kp": {"kp": False}}, label_order=("lore (w/o L_kp)", "lore"),
          labels=lambda options: "lore (w/o L_kp)" if options.get("kp") is False else "lore",
          bench=True, bench_options=_lore_bench)
def _lore(black_box: BlackBox, num_classes: int, global_prompts: int | None = None, **options) -> LORE:
    """Options not given take :class:`LOREOptions`' defaults, so ``build_model("lore", ...)`` builds
    the model ``lore train --method lore`` builds."""
    options = {**{f.name: f.default for f in fields(LOREOptions)}, **options}
    options["negative"] = default_negative(options["negative"], black_box.is_clip)
    return LORE(black_box, num_classes, global_prompts=8 if global_prompts is None else global_prompts,
                **options)
