"""``lore attention``, ``lore locality`` and ``lore report`` (without a browser; see
test_report_browser.py for the page in chromium)."""

from __future__ import annotations

import json
import math
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lore.cli import main as cli
from lore.models import build_model
from lore.synthetic.colors import write_imagefolder
from lore.viz.attention import compute_maps
from lore.viz.locality import entropy, layer_stats, model_locality, patch_centres

from conftest import TINY  # noqa: E402
GRID, PATCH, HEADS = 4, 8, 2  # 32 px images, 8 px patches -> 4x4 tokens
PROMPTS = 8 + 2  # LORE default: 8 global + 2 locality prompts per layer


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """One LORE run (1 epoch, tiny random ViT, file knowledge): (run dir, dataset)."""
    root = tmp_path_factory.mktemp("viz")
    data = write_imagefolder(root / "data", n_train=8, n_test=4)
    np.save(root / "K.npy", np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32))
    run = root / "run"
    rc = cli(["train", "--method", "lore", "--backbone", "vit_small_patch16_224", "--no-pretrained",
              "--backbone-args", TINY, "--data", str(data), "--out", str(run), "--epochs", "1",
              "--batch-size", "16", "--img-size", "32", "--workers", "0",
              "--knowledge", f"file:{root / 'K.npy'}", "--device", "cpu"])
    assert rc == 0
    return run, data


def fresh_lore() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("lore", "vit_small_patch16_224", 4, pretrained=False, backbone_args=TINY,
                       knowledge=torch.randn(4, 16)).eval()


def images(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def colours(path: Path) -> int:
    return len(np.unique(np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3), axis=0))


# ------------------------------------------------------------------------------- attention maps


@pytest.mark.parametrize("layer", [0, 1])
def test_cls_maps_are_the_blocks_own_softmax_attention(layer: int) -> None:
    """The maps equal softmax(q k^T * scale) computed by hand from the block's real input, and
    applying them to v reproduces the block's real attention output (which timm computes with
    the fused kernel): they are the weights the forward pass used."""
    model = fresh_lore()
    attn_mod = model.black_box.vit.blocks[layer].attn
    seen: dict[str, torch.Tensor] = {}

    def hook(_module, inputs, output):
        seen.setdefault("x", inputs[0].detach())
        seen.setdefault("y", output.detach())

    handle = attn_mod.register_forward_hook(hook)
    x = images(3)
    with torch.no_grad():
        model.features(x)  # hook fires in the LORE pass (prompted sequence)
    handle.remove()
    maps = compute_maps(model, x, layer)

    inp = seen["x"]
    B, T, D = inp.shape
    assert T == 1 + PROMPTS + GRID * GRID
    qkv = attn_mod.qkv(inp).reshape(B, T, 3, HEADS, D // HEADS).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    manual = torch.softmax(q @ k.transpose(-2, -1) * (D // HEADS) ** -0.5, dim=-1)  # (B, H, T, T)
    out = attn_mod.proj((manual @ v).transpose(1, 2).reshape(B, T, D))
    assert torch.allclose(out, seen["y"], atol=1e-5)  # the fused path used these weights

    row = torch.from_numpy(maps["run_cls_row"])
    assert row.shape == (3, HEADS, T)
    assert torch.allclose(row, manual[:, :, 0], atol=1e-6)
    assert torch.allclose(row.sum(-1), torch.ones(3, HEADS), atol=1e-5)  # sums to 1 over keys
    patches = manual[:, :, 0, 1 + PROMPTS:].reshape(3, HEADS, GRID, GRID)
    assert torch.allclose(torch.from_numpy(maps["run_cls_heads"]), patches, atol=1e-6)
    assert torch.allclose(torch.from_numpy(maps["run_cls"]), patches.mean(1), atol=1e-6)
    # B-B runs the same frozen ViT without prompts: 1 + 16 tokens, also rows of a softmax
    assert maps["bb_cls_row"].shape == (3, HEADS, 1 + GRID * GRID)
    np.testing.assert_allclose(maps["bb_cls_row"].sum(-1), 1.0, atol=1e-5)


def test_zero_queries_give_uniform_attention() -> None:
    """With q = 0 every score is 0, so each key gets exactly 1/T."""
    model = fresh_lore()
    qkv = model.black_box.vit.blocks[-1].attn.qkv
    D = qkv.in_features
    with torch.no_grad():
        qkv.weight[:D] = 0
        qkv.bias[:D] = 0
    maps = compute_maps(model, images(2), layer=1)
    t_bb, t_run = 1 + GRID * GRID, 1 + PROMPTS + GRID * GRID
    np.testing.assert_allclose(maps["bb_cls_row"], 1 / t_bb, rtol=1e-5)
    np.testing.assert_allclose(maps["run_cls_row"], 1 / t_run, rtol=1e-5)
    np.testing.assert_allclose(maps["bb_cls"], 1 / t_bb, rtol=1e-5)
    # the map's total is the share of CLS attention on patches: the prompts take the rest
    np.testing.assert_allclose(maps["run_cls"].sum((1, 2)), GRID * GRID / t_run, rtol=1e-5)


def test_kla_map_uses_true_class_when_known_else_prediction() -> None:
    model = fresh_lore()
    x = images(4)
    labels = [3, 2, 1, 0]
    with_labels = compute_maps(model, x, 1, labels)
    assert with_labels["kla_class"].tolist() == labels
    assert with_labels["kla"].shape == (4, GRID, GRID)
    np.testing.assert_allclose(with_labels["kla"].sum((1, 2)), 1.0, atol=1e-5)
    with torch.no_grad():
        direct = model.kla_attention(x, torch.tensor(labels))
    np.testing.assert_allclose(with_labels["kla"], direct.numpy(), atol=1e-6)
    predicted = compute_maps(model, x, 1)
    with torch.no_grad():
        assert predicted["kla_class"].tolist() == model(x).argmax(-1).tolist() == predicted["pred"].tolist()


# ------------------------------------------------------------------------------- locality maths


def one_key_attention(T: int, start: int, key: int) -> torch.Tensor:
    """(1, 1, T, T): every query puts all its weight on token ``key``."""
    a = torch.zeros(1, 1, T, T)
    a[..., key] = 1.0
    return a


def test_mean_attention_distance_hand_made_2x2() -> None:
    # 2x2 grid of 16 px patches, CLS first, every query attends to patch 0 (top left):
    # distances from the queries' centres: 0, 16, 16, 16*sqrt(2)
    stats = layer_stats(one_key_attention(5, 1, 1), (2, 2), 16, num_prefix=1, num_prompts=0)
    expected = (0 + 16 + 16 + 16 * math.sqrt(2)) / 4
    assert stats["mean_distance"].item() == pytest.approx(expected)
    assert stats["cls_distance"].item() == pytest.approx(8 * math.sqrt(2))  # centre (16,16) to (8,8)
    assert stats["cls_spread"].item() == pytest.approx(0.0)
    assert stats["cls_entropy"].item() == pytest.approx(0.0)
    assert stats["patch_mass"].item() == pytest.approx(1.0)


def test_distance_ignores_cls_and_prompt_mass_by_renormalising() -> None:
    # 1 CLS + 2 prompts + 2x2 patches; each query: 0.5 on a prompt, 0.5 on patch 3 (bottom right)
    T, start = 7, 3
    a = torch.zeros(1, 1, T, T)
    a[..., 1] = 0.5
    a[..., start + 3] = 0.5
    stats = layer_stats(a, (2, 2), 16, num_prefix=1, num_prompts=2)
    assert stats["mean_distance"].item() == pytest.approx((16 * math.sqrt(2) + 16 + 16 + 0) / 4)
    assert stats["patch_mass"].item() == pytest.approx(0.5)
    assert stats["cls_patch_mass"].item() == pytest.approx(0.5)
    assert stats["cls_distance"].item() == pytest.approx(8 * math.sqrt(2))


def test_uniform_cls_attention_has_entropy_log_n() -> None:
    h, w = 3, 4
    T = 1 + h * w
    a = torch.full((2, 3, T, T), 1.0 / T)
    stats = layer_stats(a, (h, w), 16, num_prefix=1, num_prompts=0)
    assert torch.allclose(stats["cls_entropy"], torch.full((2, 3), math.log(h * w), dtype=torch.float64))
    assert entropy(torch.tensor([0.5, 0.5, 0.0])).item() == pytest.approx(math.log(2))
    # uniform over a 2x2 grid: every patch is 8*sqrt(2) px from the centroid and the image centre
    u = layer_stats(torch.full((1, 1, 5, 5), 0.2), (2, 2), 16, 1, 0)
    assert u["cls_spread"].item() == pytest.approx(8 * math.sqrt(2))
    assert u["cls_distance"].item() == pytest.approx(8 * math.sqrt(2))


def test_vectorised_stats_match_brute_force_loops() -> None:
    h, w, ps, P = 3, 2, 14, 1
    N, start = h * w, 1 + P
    attn = torch.rand(2, 2, start + N, start + N, generator=torch.Generator().manual_seed(0)).softmax(-1)
    stats = layer_stats(attn, (h, w), ps, num_prefix=1, num_prompts=P)
    centres = [((i // w + 0.5) * ps, (i % w + 0.5) * ps) for i in range(N)]
    for b in range(2):
        for hd in range(2):
            total = 0.0
            for qi in range(N):
                row = attn[b, hd, start + qi, start:]
                row = row / row.sum()
                total += sum(float(row[kj]) * math.dist(centres[qi], centres[kj]) for kj in range(N))
            assert stats["mean_distance"][b, hd].item() == pytest.approx(total / N)
            cls = attn[b, hd, 0, start:] / attn[b, hd, 0, start:].sum()
            cy = sum(float(cls[j]) * centres[j][0] for j in range(N))
            cx = sum(float(cls[j]) * centres[j][1] for j in range(N))
            spread = sum(float(cls[j]) * math.dist(centres[j], (cy, cx)) for j in range(N))
            assert stats["cls_spread"][b, hd].item() == pytest.approx(spread)
            ent = -sum(float(p) * math.log(float(p)) for p in cls)
            assert stats["cls_entropy"][b, hd].item() == pytest.approx(ent)
    assert patch_centres(h, w, ps)[3].tolist() == [1.5 * ps, 1.5 * ps]  # row-major token order


def test_prompts_leave_block_zero_patch_attention_unchanged() -> None:
    """Before the first block the prompts have not touched any patch token, so B-B and LORE share
    every renormalised statistic at block 0, while the prompts visibly take CLS attention."""
    model = fresh_lore()
    bb = build_model("b-b", model.black_box, 0).eval()
    x = images(3)
    lore_stats, grid = model_locality(model, x, batch_size=2)
    bb_stats, _ = model_locality(bb, x, batch_size=2)
    assert grid == (GRID, GRID) and lore_stats["mean_distance"].shape == (2, HEADS)
    for key in ("mean_distance", "cls_distance", "cls_spread", "cls_entropy"):
        np.testing.assert_allclose(lore_stats[key][0], bb_stats[key][0], rtol=1e-6)
    assert (lore_stats["cls_patch_mass"][0] < bb_stats["cls_patch_mass"][0]).all()
    # from block 1 on the prompts have changed the patch tokens (tiny on a random ViT, but real)
    assert np.abs(lore_stats["mean_distance"][1] - bb_stats["mean_distance"][1]).max() > 1e-8


# ------------------------------------------------------------------------------- CLI: attention


def test_attention_cli_from_dataset(trained, tmp_path: Path) -> None:
    run, data = trained
    fig = tmp_path / "att" / "grid.png"
    assert cli(["attention", "--run", str(run), "--data", str(data), "--n", "4", "--per-head",
                "--out", str(fig), "--device", "cpu"]) == 0
    assert colours(fig) > 100
    info = json.loads(fig.with_suffix(".json").read_text())
    maps = np.load(fig.with_suffix(".npz"))
    assert info["layer"] == 1 and info["grid"] == [GRID, GRID] and not info["notes"]
    assert len(info["images"]) == 4 and info["labels"] == [0, 1, 2, 3]  # spread over the classes
    assert info["kla_class"] == info["labels"] and info["kla_class_source"] == "true class"
    assert maps["run_cls_row"].shape == (4, HEADS, 1 + PROMPTS + GRID * GRID)
    assert maps["bb_cls_heads"].shape == (4, HEADS, GRID, GRID)
    np.testing.assert_allclose(maps["run_cls_row"].sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(maps["bb_cls_row"].sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(maps["kla"].sum((1, 2)), 1.0, atol=1e-5)
    assert maps["images"].shape == (4, 32, 32, 3) and maps["images"].dtype == np.uint8
    # the displayed pixels are the de-normalised model input: the red image's square is red
    red = maps["images"][info["labels"].index(2)].reshape(-1, 3).astype(int)
    assert (red[:, 0] - red[:, 2]).max() > 120


def test_attention_cli_images_use_predicted_class(trained, tmp_path: Path) -> None:
    run, data = trained
    files = sorted((data / "test").rglob("*.png"))[:2]
    fig = tmp_path / "two.png"
    assert cli(["attention", "--run", str(run), "--images", *map(str, files), "--out", str(fig)]) == 0
    info = json.loads(fig.with_suffix(".json").read_text())
    assert info["labels"] is None and info["kla_class"] == info["predicted"]
    assert info["kla_class_source"] == "predicted class"


def test_attention_cli_without_knowledge_skips_kla(trained, tmp_path: Path, capsys) -> None:
    run, data = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("checkpoints", "knowledge.safetensors"))
    fig = tmp_path / "noKLA.png"
    assert cli(["attention", "--run", str(copy), "--data", str(data), "--n", "2", "--out", str(fig)]) == 0
    assert "KLA column skipped" in capsys.readouterr().out
    assert "kla" not in np.load(fig.with_suffix(".npz")).files
    assert json.loads(fig.with_suffix(".json").read_text())["kla_class"] is None


def test_attention_cli_bad_input(trained, tmp_path: Path, capsys) -> None:
    run, data = trained
    assert cli(["attention", "--run", str(run), "--data", str(data), "--layer", "5",
                "--out", str(tmp_path / "a.png")]) == 2
    assert "--layer 5" in capsys.readouterr().err
    assert cli(["attention", "--run", str(run), "--images", str(tmp_path / "nope.png"),
                "--out", str(tmp_path / "a.png")]) == 2
    assert "image not found" in capsys.readouterr().err
    assert cli(["attention", "--run", str(tmp_path / "norun"), "--data", str(data),
                "--out", str(tmp_path / "a.png")]) == 2
    assert not (tmp_path / "a.png").exists()


# ------------------------------------------------------------------------------- CLI: locality


def test_locality_cli(trained, tmp_path: Path) -> None:
    run, data = trained
    out = tmp_path / "loc.json"
    assert cli(["locality", "--run", str(run), "--data", str(data), "--n", "6", "--out", str(out),
                "--batch-size", "4"]) == 0
    res = json.loads(out.read_text())
    assert res["layers"] == [0, 1] and res["n_images"] == 6 and res["grid"] == [GRID, GRID]
    assert set(res["models"]) == {"b-b", "lore"}
    assert res["max_entropy"] == pytest.approx(math.log(GRID * GRID))
    farthest = math.dist((4, 4), (28, 28))
    for stats in res["models"].values():
        assert all(0 < d < farthest for d in stats["mean_distance"])
        assert all(0 <= e <= res["max_entropy"] + 1e-9 for e in stats["cls_entropy"])
        assert np.asarray(stats["mean_distance_per_head"]).shape == (2, HEADS)
        assert stats["mean_distance"] == pytest.approx(np.mean(stats["mean_distance_per_head"], 1).tolist())
    bb, lore = res["models"]["b-b"], res["models"]["lore"]
    assert lore["mean_distance"][0] == pytest.approx(bb["mean_distance"][0])  # see the block-0 test
    assert lore["cls_patch_mass"][0] < bb["cls_patch_mass"][0]
    assert colours(out.with_suffix(".png")) > 10


# ------------------------------------------------------------------------------- report


class Tables(HTMLParser):
    """Every table of a page as rows of (text, bold) cells, plus every src/href attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[tuple[str, bool]]]] = []
        self.links: list[str] = []
        self.tags: list[str] = []
        self._cell: list[str] | None = None
        self._bold = False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.links += [v or "" for k, v in attrs if k in ("src", "href")]
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell, self._bold = [], False
        elif tag == "strong" and self._cell is not None:
            self._bold = True

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append(("".join(self._cell).strip(), self._bold))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def parse(page: str) -> Tables:
    p = Tables()
    p.feed(page)
    return p


def column(table: list[list[tuple[str, bool]]], header: str) -> dict[str, tuple[str, bool]]:
    """{row label: cell} of the column named ``header``."""
    j = [t for t, _ in table[0]].index(header)
    return {row[0][0]: row[j] for row in table[1:]}


def write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def fake_study(root: Path) -> Path:
    """Runs of several methods and tasks, as lore writes them (only the files the report reads)."""
    bb = "vit_base_patch16_clip_quickgelu_224.openai"
    for name, method, ds, acc, seed in (("vpt_f", "vpt-deep", "/d/flowers102", 0.50, 1),
                                        ("lore_f1", "lore", "/d/flowers102", 0.75, 1),
                                        ("lore_f2", "lore", "/d/flowers102", 0.85, 2),
                                        ("vpt_c", "vpt-deep", "/d/cars/split_zhou_StanfordCars.json", 0.62, 1),
                                        ("lore_c", "lore", "/d/cars/split_zhou_StanfordCars.json", 0.60, 1)):
        write_json(root / "study" / name / "final.json",
                   {"method": method, "backbone": bb, "dataset": ds, "shots": 16, "seed": seed,
                    "test_acc1": acc, "test_acc5": 1.0, "trainable_params": 9_100_000,
                    "total_params": 95_000_000, "trainable_pct": 9.58, "gflops": 48.9, "seconds": 12.5,
                    "images_per_s": 74.4})
    (root / "study" / "lore_f1" / "metrics.jsonl").write_text("".join(
        json.dumps({"stage": "main", "epoch": e, "lr": 0.003 / e, "loss": 1 / e, "loss_task": 1 / e,
                    "loss_kp": -0.1, "train_acc": 0.2 * e, "seconds": 1.0}) + "\n" for e in (1, 2, 3))
        + "{not json\n")
    write_json(root / "study" / "noKP" / "final.json",
               {"method": "lore", "backbone": bb, "dataset": "/d/flowers102", "shots": 16, "seed": 1,
                "test_acc1": 0.70})
    write_json(root / "study" / "noKP" / "model.json", {"method": "lore", "options": {"kp": False}})
    write_json(root / "study" / "ret_bb" / "results.json",
               {"task": "retrieval", "method": "b-b", "backbone": bb, "dataset": "roxford5k",
                "easy": {"map": 0.6}, "medium": {"map": 0.397}, "hard": {"map": 0.107}})
    write_json(root / "study" / "ret_lore" / "results.json",
               {"task": "retrieval", "method": "lore", "backbone": bb, "dataset": "roxford5k",
                "easy": {"map": 0.6}, "medium": {"map": 0.418}, "hard": {"map": 0.171}})
    write_json(root / "study" / "spair" / "results.json",
               {"task": "correspondence", "method": "<b>evil</b>", "backbone": bb,
                "dataset": "spair-71k/test", "pck": 0.2071, "per_category": {}, "pairs": 3})
    write_json(root / "study" / "davis" / "results.json",
               {"task": "vos", "method": "lore", "backbone": "vit_base_patch16_224.augreg_in21k",
                "dataset": "davis-2017/val", "J": 0.57, "F": 0.62, "JF": 0.5946, "per_object": {}})
    write_json(root / "study" / "bench" / "bench.json",
               {"methods": {"b-b": {"infer_images_per_s": 106.1, "train_images_per_s": 40.0,
                                    "peak_mem_mb": 900.0, "gflops": 45.2, "trainable_params": 0},
                            "lore": {"infer_images_per_s": 74.4, "train_images_per_s": 30.0,
                                     "peak_mem_mb": 1000.0, "gflops": 48.9, "trainable_params": 9_100_000}},
                "ratios": {"lore/b-b": {"infer_throughput": 0.7012, "gflops": 1.0819}},
                "config": {"backbone": bb, "img_size": 224, "batch": 8, "device": "cpu"}})
    Image.new("RGB", (40, 30), (200, 10, 10)).save(root / "study" / "lore_f1" / "attention.png")
    (root / "study" / "lore_f1" / "broken.png").write_text("not a png")
    (root / "study" / "lore_f1" / "checkpoints").mkdir()
    return root / "study"


def test_report_layout_and_numbers(tmp_path: Path, capsys) -> None:
    study = fake_study(tmp_path)
    out = tmp_path / "report.html"
    assert cli(["report", str(study), "--out", str(out), "--title", "My <study>"]) == 0
    page = out.read_text()
    doc = parse(page)
    # self-contained: no script, every image inlined, no external reference
    assert "script" not in doc.tags
    assert all(link.startswith("data:") for link in doc.links) and len(doc.links) >= 3
    assert "<b>evil</b>" not in page and "&lt;b&gt;evil&lt;/b&gt;" in page
    assert "<title>My &lt;study&gt;</title>" in page

    runs_table = doc.tables[0]
    clip_table = next(t for t in doc.tables if ("flowers102 16-shot", False) in t[0])
    vit_table = next(t for t in doc.tables if ("davis-2017/val J&F", False) in t[0])
    assert len(runs_table) == 1 + 11
    header = [t for t, _ in clip_table[0]]
    assert header == ["method", "flowers102 16-shot", "StanfordCars 16-shot", "Average",
                      "roxford5k mAP M", "roxford5k mAP H", "spair-71k/test PCK@0.1"]
    methods = [row[0][0] for row in clip_table[1:]]
    assert methods == ["b-b", "vpt-deep", "<b>evil</b>", "lore (w/o L_kp)", "lore"]  # paper order
    flowers = column(clip_table, "flowers102 16-shot")
    assert flowers["lore"] == ("80.00 ± 7.07", True)  # two seeds: mean ± std, best -> bold
    assert flowers["vpt-deep"] == ("50.00", False)
    assert flowers["lore (w/o L_kp)"] == ("70.00", False)
    assert column(clip_table, "StanfordCars 16-shot")["vpt-deep"] == ("62.00", True)
    average = column(clip_table, "Average")
    assert average["lore"] == ("70.00", True) and average["vpt-deep"] == ("56.00", False)
    assert average["lore (w/o L_kp)"] == ("–", False)  # no cars run: no average
    assert column(clip_table, "roxford5k mAP M") == {
        "b-b": ("39.70", False), "vpt-deep": ("–", False), "<b>evil</b>": ("–", False),
        "lore (w/o L_kp)": ("–", False), "lore": ("41.80", True)}
    assert column(clip_table, "spair-71k/test PCK@0.1")["<b>evil</b>"] == ("20.71", True)
    assert [t for t, _ in vit_table[0]] == ["method", "davis-2017/val J&F"]
    assert vit_table[1] == [("lore", False), ("59.46", True)]

    cost = next(t for t in doc.tables if t[0][0][0] == "run" and "trainable params" in [c for c, _ in t[0]])
    assert column(cost, "trainable params")["lore_f1"] == ("9,100,000", False)
    bench = next(t for t in doc.tables if t[0][0][0] == "method" and "inference images/s" in [c for c, _ in t[0]])
    assert column(bench, "inference images/s") == {"b-b": ("106.1", False), "lore": ("74.4", False)}
    ratios = next(t for t in doc.tables if t[0][0][0] == "ratio")
    assert column(ratios, "infer_throughput")["lore/b-b"][0] == "0.701"
    # curves (1 run with metrics) + the one real figure; broken PNG and bad JSON line are notes
    assert len([link for link in doc.links if link.startswith("data:image/png;base64,")]) == 2
    assert "broken.png: not a PNG file" in page and "line 4 skipped" in page
    assert "note:" in capsys.readouterr().out


def test_report_reads_real_runs_and_figures(trained, tmp_path: Path) -> None:
    run, data = trained
    fig = run / "attention.png"
    if not fig.exists():
        assert cli(["attention", "--run", str(run), "--data", str(data), "--n", "2", "--out", str(fig)]) == 0
    out = tmp_path / "r.html"
    assert cli(["report", str(run), "--out", str(out)]) == 0
    page = out.read_text()
    final = json.loads((run / "final.json").read_text())
    doc = parse(page)
    results = next(t for t in doc.tables if t[0][0][0] == "method")
    assert results[1] == [("lore", False), (f"{100 * final['test_acc1']:.2f}", True)]
    assert "attention grid, block 1" in page
    assert f"{final['trainable_params']:,}" in page


def test_report_bad_input(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    assert cli(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "r.html")]) == 2
    assert "no lore results" in capsys.readouterr().err
    assert cli(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "r.html")]) == 2
    assert not (tmp_path / "r.html").exists()
