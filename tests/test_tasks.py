"""Downstream tasks end to end on tiny datasets in the real on-disk formats (revisited Oxford gnd
pickle + jpg/, SPair-71k pair JSONs + JPEGImages/, a DAVIS tree with indexed PNGs), with a tiny
random-init ViT and known answers; label propagation against the DINO definition; bad input."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from lore.errors import LoreError
from lore.tasks import correspondence, retrieval, vos
from lore.tasks.common import Extractor

from conftest import TINY  # noqa: E402
MODEL_ARGS = ["--backbone", "vit_small_patch16_224", "--no-pretrained", "--backbone-args", TINY,
              "--device", "cpu"]


def lore_cli(*args) -> int:
    from lore.cli import main
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def extractor() -> Extractor:
    from lore.backbone import build_black_box
    from lore.models import build_model

    torch.manual_seed(0)
    black_box = build_black_box("vit_small_patch16_224", pretrained=False, backbone_args=TINY)
    return Extractor(build_model("b-b", black_box, 0))


def noise_image(path: Path, width: int, height: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=95)


# ============================================================================ retrieval


def make_oxford(root: Path, dataset: str = "roxford5k") -> Path:
    """6 database images; query q0 is a copy of image 1 (its only, easy, positive), query q1 a
    copy of image 4 (its only, hard, positive), with junk that must not matter."""
    base = root / dataset
    jpg = base / "jpg"
    imlist = [f"db_{i}" for i in range(6)]
    for i, name in enumerate(imlist):
        noise_image(jpg / f"{name}.jpg", 40 + 4 * i, 30, seed=i)
    shutil.copy(jpg / "db_1.jpg", jpg / "q_0.jpg")
    shutil.copy(jpg / "db_4.jpg", jpg / "q_1.jpg")
    gnd = {
        "imlist": imlist,
        "qimlist": ["q_0", "q_1"],
        "gnd": [
            {"bbx": np.array([0.0, 0.0, 44.0, 30.0]), "easy": np.array([1]), "hard": np.array([], int),
             "junk": np.array([3])},
            {"bbx": [2.0, 2.0, 50.0, 28.0], "easy": [], "hard": [4], "junk": [0, 5]},
        ],
    }
    with open(base / f"gnd_{dataset}.pkl", "wb") as f:
        pickle.dump(gnd, f)
    return root


def test_retrieval_exact_copies_give_map_one(tmp_path: Path) -> None:
    root = make_oxford(tmp_path / "data")
    out = tmp_path / "out"
    assert lore_cli("retrieval", "--dataset", "roxford5k", "--root", root, "--imsize", 32,
                    "--out", out, *MODEL_ARGS) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["task"] == "retrieval" and res["method"] == "b-b" and res["dataset"] == "roxford5k"
    assert res["backbone"] == "vit_small_patch16_224"
    for level in ("easy", "medium", "hard"):
        assert res[level]["map"] == pytest.approx(1.0), level
        assert res[level]["mp"] == pytest.approx([1.0, 1.0, 1.0]), level
    assert res["queries"] == 2 and res["images"] == 6


def test_retrieval_scores_follow_the_ranking(tmp_path: Path, extractor: Extractor) -> None:
    data = retrieval.read_revisited(make_oxford(tmp_path), "roxford5k")
    # a wrong positive: query 0's positive becomes image 2 (not a copy) -> mAP below 1
    data.gnd[0]["easy"] = np.array([2])
    scores = retrieval.evaluate(extractor, data, imsize=32, multiscale=True)
    assert scores["easy"]["map"] < 1.0
    assert scores["hard"]["map"] == pytest.approx(1.0)  # query 1 is still a copy of image 4
    cropped = retrieval.evaluate(extractor, data, imsize=32, crop_queries=True)
    assert 0.0 < cropped["medium"]["map"] <= 1.0
    query = retrieval.load_retrieval_image(data.queries[1], 32, data.bbx[1])  # 48x26 box -> 32 wide
    assert query.size[0] == 32 and query.size[1] in (17, 18)
    db = retrieval.extract(extractor, data.images, 32, multiscale=False)
    assert db.shape == (6, 64)
    assert torch.allclose(db.norm(dim=1), torch.ones(6))


def test_retrieval_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(LoreError, match="gnd_roxford5k.pkl"):
        retrieval.read_revisited(tmp_path, "roxford5k")
    root = make_oxford(tmp_path)
    gnd_file = root / "roxford5k" / "gnd_roxford5k.pkl"
    good = gnd_file.read_bytes()

    def write(obj) -> None:
        with open(gnd_file, "wb") as f:
            pickle.dump(obj, f)

    write({"imlist": ["db_0"], "gnd": []})
    with pytest.raises(LoreError, match="missing key.*qimlist"):
        retrieval.read_revisited(root, "roxford5k")
    write({"imlist": ["db_0"], "qimlist": ["q_0"], "gnd": [{"easy": [0], "hard": []}]})
    with pytest.raises(LoreError, match=r"gnd\[0\] lacks junk"):
        retrieval.read_revisited(root, "roxford5k")
    write({"imlist": ["db_0"], "qimlist": ["q_0"], "gnd": [{"easy": [7], "hard": [], "junk": []}]})
    with pytest.raises(LoreError, match="index 7 outside"):
        retrieval.read_revisited(root, "roxford5k")
    write({"imlist": ["db_0", "missing"], "qimlist": ["q_0"], "gnd": [{"easy": [0], "hard": [], "junk": []}]})
    with pytest.raises(LoreError, match="missing.jpg"):
        retrieval.read_revisited(root, "roxford5k")

    class Evil:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    write({"imlist": [], "qimlist": [], "gnd": [Evil()]})
    with pytest.raises(LoreError, match="refused"):
        retrieval.read_revisited(root, "roxford5k")
    assert not (tmp_path / "pwned").exists()
    gnd_file.write_bytes(good[: len(good) // 2])
    with pytest.raises(LoreError, match="truncated"):
        retrieval.read_revisited(root, "roxford5k")
    gnd_file.write_bytes(good)
    (root / "roxford5k" / "jpg" / "db_2.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    assert lore_cli("retrieval", "--dataset", "roxford5k", "--root", root, "--imsize", 32, "--out", out,
                    *MODEL_ARGS) == 2
    assert not (out / "results.json").exists()


# ============================================================================ SPair-71k

SPAIR_FIELDS = dict(mirror=0, viewpoint_variation=0, scale_variation=0, truncation=0, occlusion=0,
                    src_pose="Unspecified", trg_pose="Unspecified", kps_ids=[])


def write_pair(root: Path, name: str, category: str, src: str, trg: str, src_kps, trg_kps, size,
               trg_size=None, split: str = "test", drop: tuple[str, ...] = ()) -> Path:
    W, H = size
    tW, tH = trg_size or size
    record = {**SPAIR_FIELDS, "pair_id": name, "filename": f"{name}.json", "category": category,
              "src_imname": src, "trg_imname": trg, "src_imsize": [W, H, 3], "trg_imsize": [tW, tH, 3],
              "src_bndbox": [0, 0, W - 1, H - 1], "trg_bndbox": [0, 0, tW - 1, tH - 1],
              "src_kps": [list(map(int, p)) for p in src_kps], "trg_kps": [list(map(int, p)) for p in trg_kps],
              "kps_ids": [str(i) for i in range(len(src_kps))]}
    for key in drop:
        del record[key]
    path = root / "PairAnnotation" / split / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return path


def make_spair(root: Path) -> Path:
    """Two categories; every pair's target is its source image, keypoints identical."""
    rng = np.random.default_rng(0)
    pid = 0
    for c, category in enumerate(("cat", "bicycle")):
        for i in range(2):
            W, H = (100, 80) if i == 0 else (72, 96)
            imname = f"2008_{c}{i:05d}.jpg"
            noise_image(root / "JPEGImages" / category / imname, W, H, seed=10 * c + i)
            kps = np.stack([rng.integers(0, W, 6), rng.integers(0, H, 6)], axis=1)
            pid += 1
            write_pair(root, f"{pid:06d}-{imname[:-4]}-{imname[:-4]}:{category}", category, imname, imname,
                       kps, kps, (W, H))
    return root


def test_correspondence_identical_pairs_give_pck_one(tmp_path: Path) -> None:
    root = make_spair(tmp_path / "spair")
    out = tmp_path / "out"
    assert lore_cli("correspond", "--root", root, "--split", "test", "--imsize", 128, "--out", out,
                    *MODEL_ARGS) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["task"] == "correspondence" and res["method"] == "b-b"
    assert res["pck"] == pytest.approx(1.0)
    assert res["per_category"] == pytest.approx({"bicycle": 1.0, "cat": 1.0})
    assert res["pairs"] == 4 and res["keypoints"] == 24
    assert res["mutual_fraction"] == pytest.approx(1.0)


def test_correspondence_options_and_a_wrong_target(tmp_path: Path, extractor: Extractor) -> None:
    root = make_spair(tmp_path)
    # a pair whose target is another (random) image: nearest neighbours land elsewhere
    noise_image(root / "JPEGImages" / "cat" / "other.jpg", 100, 80, seed=99)
    kps = np.array([[5, 5], [90, 70], [50, 10], [20, 60], [70, 30], [40, 40]])
    write_pair(root, "000009-x-other:cat", "cat", "2008_000000.jpg", "other.jpg", kps, kps[::-1], (100, 80))
    pairs = correspondence.read_spair(root, "test")
    assert [p.category for p in pairs] == ["bicycle", "bicycle", "cat", "cat", "cat"]
    res = correspondence.evaluate(extractor, pairs, imsize=128, match="nn", threshold_by="image")
    assert res["per_category"]["bicycle"] == pytest.approx(1.0)
    assert res["per_category"]["cat"] < 1.0
    assert res["keypoints"] == 30
    assert len(correspondence.read_spair(root, "test", limit=2)) == 2


def test_match_keypoints_follows_a_shifted_image() -> None:
    # the target grid is the source grid moved one patch to the right: every match moves 8 px
    g = torch.Generator().manual_seed(0)
    src = F.normalize(torch.randn(16, 8, 8, generator=g), dim=0)  # (D, h, w) of a 64x64 image
    trg = torch.roll(src, shifts=1, dims=2)
    centres = torch.tensor([[3.5 + 8 * j, 3.5 + 8 * i] for i in range(8) for j in range(7)], dtype=torch.float64)
    pred, kept = correspondence.match_keypoints(src, trg, centres, imsize=64, patch_size=8)
    # the best pixel is next to the matched patch centre (the upsampled map is flat over the
    # half patch at the image border, where the first pixel wins)
    assert ((pred - (centres + torch.tensor([8.0, 0.0]))).abs() <= 4).all()
    assert kept.all()
    # sources in the last column match the wrapped-around column 0 of the target
    last = torch.tensor([[59.5, 3.5 + 8 * i] for i in range(8)], dtype=torch.float64)
    pred, kept = correspondence.match_keypoints(src, trg, last, imsize=64, patch_size=8, match="nn")
    assert ((pred - torch.tensor([3.5, 0.0]) - last * torch.tensor([0.0, 1.0])).abs() <= 4).all()


def test_extractor_layer_reads_an_earlier_block(extractor: Extractor) -> None:
    """--layer: block i's patch tokens as that block leaves them (what timm's
    forward_intermediates returns); the last block (-1 or depth-1) is the final-normed default."""
    from lore.models import build_model

    vit = extractor.black_box.vit
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    first = Extractor(extractor.model, layer=0).features(x)["patches"]
    # (B, patches, D): timm leaves the prefix tokens out
    expected = vit.forward_intermediates(x, indices=[0], norm=False, output_fmt="NLC", intermediates_only=True)[0]
    assert torch.allclose(first, expected.reshape(2, 4, 4, 64), atol=1e-5)
    last = extractor.features(x)["patches"]
    assert torch.equal(Extractor(extractor.model, layer=1).features(x)["patches"], last)
    assert not torch.allclose(first, last)
    # with prompts (VPT-deep) the earlier block's tokens are the patch slots, prompts left out
    torch.manual_seed(0)
    vpt = Extractor(build_model("vpt-deep", extractor.black_box, 3, num_prompts=5), layer=0)
    assert vpt.features(x)["patches"].shape == (2, 4, 4, 64)
    with pytest.raises(LoreError, match="--layer 2: the backbone has 2 blocks"):
        Extractor(extractor.model, layer=2)


def test_vos_cli_layer(tmp_path: Path) -> None:
    root = make_davis(tmp_path / "davis")
    assert lore_cli("vos", "--root", root, "--short-side", 64, "--layer", 0, "--out", tmp_path / "o",
                    *MODEL_ARGS) == 0
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert res["layer"] == 0 and res["JF"] == pytest.approx(1.0)  # identical frames at any block


def test_correspond_cli_layer(tmp_path: Path) -> None:
    root = make_spair(tmp_path / "spair")
    out = tmp_path / "out"
    assert lore_cli("correspond", "--root", root, "--imsize", 128, "--layer", 0, "--out", out, *MODEL_ARGS) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["layer"] == 0 and res["pck"] == pytest.approx(1.0)  # identical pairs at any block
    assert lore_cli("correspond", "--root", root, "--imsize", 128, "--layer", 5, "--out", tmp_path / "o2",
                    *MODEL_ARGS) == 2
    assert not (tmp_path / "o2" / "results.json").exists()


def test_correspondence_bad_inputs(tmp_path: Path) -> None:
    root = make_spair(tmp_path)
    with pytest.raises(LoreError, match="found splits: test"):
        correspondence.read_spair(root, "val")
    bad = write_pair(root, "000099-a-b:cat", "cat", "2008_000000.jpg", "2008_000000.jpg", [[1, 2]], [[1, 2]],
                     (100, 80), drop=("trg_kps",))
    with pytest.raises(LoreError, match=r"000099-a-b:cat.json: missing field\(s\) trg_kps"):
        correspondence.read_spair(root, "test")
    bad.write_text('{"src_imname": "a.jpg",')
    with pytest.raises(LoreError, match="not valid JSON"):
        correspondence.read_spair(root, "test")
    write_pair(root, "000099-a-b:cat", "cat", "2008_000000.jpg", "2008_000000.jpg", [[1, 2], [3, 4]], [[1, 2]],
               (100, 80))
    with pytest.raises(LoreError, match="2 src_kps but 1 trg_kps"):
        correspondence.read_spair(root, "test")
    # the annotation disagrees with the image on disk (100x80)
    write_pair(root, "000099-a-b:cat", "cat", "2008_000000.jpg", "2008_000000.jpg", [[1, 2]], [[1, 2]],
               (120, 80))
    out = tmp_path / "out"
    assert lore_cli("correspond", "--root", root, "--imsize", 64, "--out", out, *MODEL_ARGS) == 2
    assert not (out / "results.json").exists()
    bad.unlink()
    assert lore_cli("correspond", "--root", root, "--imsize", 60, "--out", out, *MODEL_ARGS) == 2


# ============================================================================ DAVIS


def make_davis(root: Path, frames: int = 5) -> Path:
    """One sequence whose frames are all the same noise image; two objects (vertical stripes on
    the 8-px patch grid, so the frame's own labels are recoverable exactly), and void pixels."""
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("still\n")
    frame_dir = root / "JPEGImages" / "480p" / "still"
    ann_dir = root / "Annotations" / "480p" / "still"
    ann = np.zeros((64, 128), np.uint8)
    ann[:, 16:40] = 1
    ann[:, 64:96] = 2
    palette = vos.davis_palette()
    for t in range(frames):
        noise_image(frame_dir / f"{t:05d}.jpg", 128, 64, seed=7)
        labels = ann.copy()
        if t == frames - 1:
            labels[0, 100] = vos.VOID
        vos.write_annotation(ann_dir / f"{t:05d}.png", labels, palette)
    return root


def test_vos_identical_frames_give_jf_one(tmp_path: Path) -> None:
    root = make_davis(tmp_path / "davis")
    out = tmp_path / "out"
    assert lore_cli("vos", "--root", root, "--set", "val", "--short-side", 64, "--out", out, *MODEL_ARGS) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["task"] == "vos" and res["dataset"] == "davis-2017/val" and res["layer"] == 1  # the last
    assert res["J"] == pytest.approx(1.0) and res["F"] == pytest.approx(1.0) and res["JF"] == pytest.approx(1.0)
    assert sorted(res["per_object"]) == ["still_1", "still_2"]
    truth = np.array(Image.open(root / "Annotations" / "480p" / "still" / "00000.png"))
    for t in range(5):
        written = Image.open(out / "still" / f"{t:05d}.png")
        assert written.mode == "P"
        assert written.getpalette()[:9] == [0, 0, 0, 128, 0, 0, 0, 128, 0]
        assert np.array_equal(np.array(written), truth)


def test_vos_scores_a_wrong_prediction(tmp_path: Path, extractor: Extractor) -> None:
    root = make_davis(tmp_path)
    seq = vos.read_davis(root, "val")[0]
    predictions = vos.propagate_sequence(extractor, seq, short_side=64)
    predictions[2] = np.where(predictions[2] == 2, 0, predictions[2])  # object 2 lost in frame 2
    scores = vos.score_sequence(seq, predictions)
    # frames 1..3 are scored (first and last dropped): object 2 has J = 1, 0, 1
    assert scores["still_2"]["J"] == pytest.approx([1.0, 0.0, 1.0])
    assert scores["still_2"]["F"] == pytest.approx([1.0, 0.0, 1.0])
    assert scores["still_1"]["J"] == pytest.approx([1.0, 1.0, 1.0])


def test_davis_palette() -> None:
    palette = vos.davis_palette()
    assert palette.shape == (256, 3)
    assert palette[:5].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128]]
    assert palette[255].tolist() == [224, 224, 192]


def test_working_size() -> None:
    assert vos.working_size(480, 854, 480, 16) == (480, 832)  # DINO: 854 -> floor to 64
    assert vos.working_size(854, 480, 480, 8) == (832, 480)
    assert vos.working_size(480, 854, 480, 14) == (476, 840)


def test_vos_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(LoreError, match="is --root the DAVIS folder"):
        vos.read_davis(tmp_path, "val")
    root = make_davis(tmp_path / "d")
    with pytest.raises(LoreError, match=r"found: val"):
        vos.read_davis(root, "test-dev")
    ann_dir = root / "Annotations" / "480p" / "still"
    first = ann_dir / "00000.png"
    saved = first.read_bytes()
    first.unlink()
    with pytest.raises(LoreError, match="still has no first-frame annotation"):
        vos.read_davis(root, "val")
    Image.new("RGB", (128, 64)).save(first)
    seq = vos.read_davis(root, "val")[0]
    with pytest.raises(LoreError, match="RGB image; DAVIS annotations are indexed"):
        vos.read_annotation(seq.annotations[0])
    first.write_bytes(saved)
    frame = root / "JPEGImages" / "480p" / "still" / "00002.jpg"
    good = frame.read_bytes()
    noise_image(frame, 120, 64, seed=1)
    with pytest.raises(LoreError, match=r"00002.jpg is 120x64 but the first annotation is 128x64"):
        vos.read_davis(root, "val")
    # a frame that decodes badly half-way: exit 2, an existing output folder stays as it was
    frame.write_bytes(good[: len(good) // 2])
    out = tmp_path / "out"
    (out / "still").mkdir(parents=True)
    (out / "still" / "00000.png").write_bytes(b"old result")
    (out / "results.json").write_text("{}")
    assert lore_cli("vos", "--root", root, "--short-side", 64, "--out", out, *MODEL_ARGS) == 2
    assert (out / "results.json").read_text() == "{}"
    assert [p.name for p in (out / "still").iterdir()] == ["00000.png"]
    assert (out / "still" / "00000.png").read_bytes() == b"old result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "out"]  # no staging folder left


# ============================================================================ label propagation


def dino_label_propagation(feat_tar, feats_src, segs, h, w, topk, radius, temperature):
    """The DINO reference step, written from its definition (dense affinity, mask, column top-k)."""
    n = feats_src.shape[0]
    ft = F.normalize(feat_tar, dim=1)
    fs = F.normalize(feats_src, dim=1)
    aff = torch.exp(torch.einsum("td,nds->nts", ft, fs) / temperature)  # (n, target, source)
    if radius > 0:
        ii, jj = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        ii, jj = ii.flatten(), jj.flatten()
        near = ((ii[:, None] - ii[None]).abs() <= radius) & ((jj[:, None] - jj[None]).abs() <= radius)
        aff = aff * near
    aff = aff.transpose(2, 1).reshape(-1, h * w)  # (n * source, target)
    kth = aff.topk(topk, dim=0).values.min(dim=0).values
    aff = torch.where(aff < kth, torch.zeros_like(aff), aff)
    aff = aff / aff.sum(dim=0, keepdim=True)
    C = segs.shape[1]
    table = segs.reshape(n, C, -1).transpose(2, 1).reshape(-1, C).T
    return (table @ aff).reshape(C, h, w)


@pytest.mark.parametrize("h,w,n,radius,topk", [(7, 11, 3, 2, 5), (12, 5, 2, 3, 4), (9, 9, 1, 1, 3),
                                               (6, 20, 4, 0, 5), (10, 13, 3, 12, 5), (30, 55, 2, 12, 5)])
def test_label_propagation_equals_dino_reference(h: int, w: int, n: int, radius: int, topk: int) -> None:
    g = torch.Generator().manual_seed(h * 100 + w)
    d, C = 16, 4
    feat_tar = torch.randn(h * w, d, generator=g)
    feats_src = torch.randn(n, d, h * w, generator=g)
    segs = torch.rand(n, C, h, w, generator=g)
    got = vos.label_propagation(feat_tar, feats_src, segs, h, w, topk=topk, radius=radius, temperature=0.1)
    expected = dino_label_propagation(feat_tar, feats_src, segs, h, w, topk, radius, 0.1)
    assert got.shape == (C, h, w)
    assert torch.allclose(got, expected, atol=1e-5)


def test_label_propagation_respects_the_window() -> None:
    # the target patch (0, 0) is identical to the source patch (0, 9), far outside radius 2:
    # with the window it must take its label from its neighbourhood, without it from (0, 9)
    h, w, d = 4, 10, 8
    g = torch.Generator().manual_seed(0)
    src = F.normalize(torch.randn(1, d, h * w, generator=g), dim=1)
    tar = F.normalize(torch.randn(h * w, d, generator=g), dim=1)
    tar[0] = src[0, :, 9]
    seg = torch.zeros(1, 2, h, w)
    seg[0, 0] = 1.0
    seg[0, :, 0, 9] = torch.tensor([0.0, 1.0])
    free = vos.label_propagation(tar, src, seg, h, w, topk=1, radius=0)
    local = vos.label_propagation(tar, src, seg, h, w, topk=1, radius=2)
    assert free[:, 0, 0].tolist() == [0.0, 1.0]
    assert local[:, 0, 0].tolist() == [1.0, 0.0]


def test_window_plan_is_cached_and_fast() -> None:
    import time

    vos._window_plan.cache_clear()
    start = time.perf_counter()
    _, plan, _ = vos._window_plan(30, 55, 12, "cpu")
    elapsed = time.perf_counter() - start
    assert vos._window_plan(30, 55, 12, "cpu")[1] is plan
    assert elapsed < 1.0  # milliseconds in practice; generous for a loaded test machine
    # every (target, source) pair inside the window is allowed exactly once across the bands
    allowed = sum(int(torch.isfinite(b).sum()) for *_, b in plan)
    rows = sum(min(i + 12, 29) - max(i - 12, 0) + 1 for i in range(30))
    cols = sum(min(j + 12, 54) - max(j - 12, 0) + 1 for j in range(55))
    assert allowed == rows * cols


def test_names_from_dataset_files_stay_inside_their_root(tmp_path: Path) -> None:
    from lore.io import inside_root

    root = tmp_path / "root"
    (root / "seq" / "sub").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (root / "link").symlink_to(tmp_path / "outside")
    assert inside_root(root, "seq/sub", "list.txt", 1) == root / "seq" / "sub"
    assert inside_root(root, "not-yet-there", "list.txt", 2) == root / "not-yet-there"
    for name in ("../outside", "seq/../../outside", "/etc/hostname", "link", "link/x", ".", ""):
        with pytest.raises(LoreError, match="list.txt, line 3"):
            inside_root(root, name, "list.txt", 3)
