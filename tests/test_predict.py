"""lore.predict: one row per image in input order, errors marked, the run's own transform."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import TINY_CLIP_BACKBONE as CLIP, lore_cli, train_tiny as train


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_predict_marks_a_corrupt_image_and_agrees_with_eval(lore_run: Path, colors: Path, tmp_path: Path) -> None:
    """A folder with a nested folder and a corrupt file: one row per image in a stable order, the bad
    one marked and counted; on the labelled test images the predictions score what `lore eval` scores
    and equal the model's own argmax."""
    from lore.checkpoint import load_run
    from lore.data import eval_transform, load_image

    images = tmp_path / "images"
    shutil.copytree(colors / "test", images / "nested")
    (images / "broken.png").write_bytes(b"this is not a png")
    out = tmp_path / "pred.csv"
    assert lore_cli("predict", "--run", lore_run, images, "--out", out, "--topk", 3, "--workers", 0,
                    "--device", "cpu") == 0
    rows = read_csv(out)
    good = sorted(str(p) for p in (colors / "test").rglob("*.png"))
    assert len(rows) == len(good) + 1
    bad = [r for r in rows if r["status"] != "ok"]
    assert [Path(r["path"]).name for r in bad] == ["broken.png"] and bad[0]["status"].startswith("error:")
    assert bad[0]["class"] == "" and bad[0]["probability"] == ""
    ok = [r for r in rows if r["status"] == "ok"]
    classes = json.loads((lore_run / "model.json").read_text())["classnames"]
    for r in ok:  # probabilities are sorted, the first top-k entry is the prediction
        p = [float(r[f"probability_{j}"]) for j in (1, 2, 3)]
        assert p == sorted(p, reverse=True) and r["class_1"] == r["class"] and r["class"] in classes
        assert 0 < float(r["probability"]) <= 1
    truth = [Path(r["path"]).parent.name for r in ok]
    acc = np.mean([r["class"] == t for r, t in zip(ok, truth)])
    assert lore_cli("eval", "--run", lore_run, "--workers", 0, "--device", "cpu", "--out", tmp_path / "ev") == 0
    assert acc == pytest.approx(json.loads((tmp_path / "ev" / "eval_test.json").read_text())["acc1"])
    model, _ = load_run(lore_run)
    crop = yaml.safe_load((lore_run / "config.yaml").read_text())["crop_pct"]  # the run's, not the backbone's
    tf = eval_transform(32, {**model.black_box.data_config, "crop_pct": crop})
    with torch.no_grad():
        logits = model(torch.stack([tf(load_image(r["path"])) for r in ok]))
    assert [classes[i] for i in logits.argmax(-1).tolist()] == [r["class"] for r in ok]
    assert np.allclose([float(r["probability"]) for r in ok], logits.softmax(-1).max(-1).values.numpy(), atol=2e-6)


def test_predict_reads_a_list_file_writes_jsonl_and_refuses_to_replace_run_files(lore_run: Path, colors: Path,
                                                                                 tmp_path: Path) -> None:
    red = sorted((colors / "test" / "red").glob("*.png"))[:2]
    listing = tmp_path / "list.txt"
    listing.write_text(f"# two images and a missing one\n{red[0]}\n\n{red[1]}\nmissing.png\n")
    out = tmp_path / "p.jsonl"
    assert lore_cli("predict", "--run", lore_run, listing, "--out", out, "--topk", 9, "--workers", 0) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["status"] for r in records] == ["ok", "ok", "error: file not found"]
    assert "class_4" in records[0] and "class_5" not in records[0]  # top-k capped at the 4 classes
    before = (lore_run / "model.json").read_bytes()
    assert lore_cli("predict", "--run", lore_run, red[0], "--out", lore_run / "model.json") == 2
    assert (lore_run / "model.json").read_bytes() == before
    assert lore_cli("predict", "--run", lore_run, tmp_path / "nowhere") == 2


def test_predict_works_for_a_training_free_clip_run(colors: Path, clip_spec: str, tmp_path: Path) -> None:
    run = train(tmp_path / "zs", colors, "--method", "zeroshot", "--knowledge", clip_spec, backbone=CLIP)
    out = tmp_path / "zs.csv"
    assert lore_cli("predict", "--run", run, colors / "test" / "blue", "--out", out, "--workers", 0) == 0
    assert all(r["status"] == "ok" and r["class"] for r in read_csv(out))


def test_predict_skips_missing_paths_reads_a_bom_list_and_leaves_nothing_on_error(lore_run: Path, colors: Path,
                                                                                 tmp_path: Path, monkeypatch,
                                                                                 capsys) -> None:
    from lore import predict as predict_mod

    red = sorted((colors / "test" / "red").glob("*.png"))[0]
    listing = tmp_path / "list.txt"  # saved by a Windows editor: a BOM before the first path
    listing.write_text("\ufeff" + f"{red}\n" + "".join(f"missing{i}.png\n" for i in range(300)), encoding="utf-8")
    opened = []
    original = predict_mod.UnlabelledImages.__getitem__
    monkeypatch.setattr(predict_mod.UnlabelledImages, "__getitem__", lambda self, i: opened.append(i) or original(self, i))
    out = tmp_path / "p.csv"
    assert lore_cli("predict", "--run", lore_run, listing, "--out", out, "--workers", 0, "--amp", "fp16",
                    "--device", "cpu") == 0
    records = read_csv(out)
    assert len(records) == 301 and records[0]["status"] == "ok" and records[0]["class"] == "red"
    assert {r["status"] for r in records[1:]} == {"error: file not found"}
    assert len(opened) == 1  # the missing files never went through the model
    assert "--amp fp16 runs on CUDA only; on cpu this runs in float32" in capsys.readouterr().err
    nested = tmp_path / "new" / "deeper" / "p.csv"  # an input error leaves no folder behind
    assert lore_cli("predict", "--run", lore_run, tmp_path / "nowhere", "--out", nested) == 2
    assert not (tmp_path / "new").exists()


def test_an_img_size_edited_in_config_yaml_is_refused(lore_run: Path, colors: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(lore_run, run)
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("img_size: 32", "img_size: 64"))
    red = sorted((colors / "test" / "red").glob("*.png"))[0]
    assert lore_cli("predict", "--run", run, red, "--out", tmp_path / "p.csv", "--workers", 0) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert str(config) in line and "img_size 64 differs from 32 in model.json" in line
