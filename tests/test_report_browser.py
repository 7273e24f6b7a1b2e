"""``lore report`` opened in a real headless browser (Debian's chromium).

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON
messages ending in NUL on file descriptors 3 and 4), so no Python dependency is needed. The test
collects console messages, uncaught exceptions, browser log errors (failed loads, Content
Security Policy violations) and every request the page makes; reads the rendered DOM; and takes
a screenshot.

Set-up: ``scripts/install_chromium.sh`` (apt-get install chromium) runs when chromium is missing;
the tests skip, saying why, only when it cannot be installed.
"""

from __future__ import annotations

import base64
import fcntl
import io
import json
import os
import select
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lore.cli import main as cli
from lore.synthetic.colors import write_imagefolder

REPO = Path(__file__).resolve().parents[1]
INSTALL = REPO / "scripts" / "install_chromium.sh"
from conftest import TINY  # noqa: E402
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check",
         "--remote-debugging-pipe", "--window-size=1280,1600"]


@pytest.fixture(scope="session")
def chromium() -> str:
    exe = shutil.which("chromium")
    if exe is None and INSTALL.is_file():
        try:
            proc = subprocess.run(["bash", str(INSTALL)], capture_output=True, text=True, timeout=540)
            reason = proc.stderr.strip() or f"{INSTALL.name} exited with {proc.returncode}"
        except subprocess.TimeoutExpired:
            reason = f"{INSTALL.name} took more than 9 minutes"
        exe = shutil.which("chromium")
        if exe is None:
            pytest.skip(f"chromium could not be installed: {reason}")
    if exe is None:
        pytest.skip("chromium is not installed and scripts/install_chromium.sh is missing")
    return exe


class Browser:
    """A headless chromium and a minimal DevTools-protocol client over its pipe."""

    def __init__(self, exe: str, user_dir: Path):
        to_r, self._w = os.pipe()
        self._r, from_w = os.pipe()
        # chromium reads commands on fd 3 and writes answers on fd 4; the child's ends are first
        # moved above 10 so that placing them on 3 and 4 cannot overwrite one another
        child_in = fcntl.fcntl(to_r, fcntl.F_DUPFD_CLOEXEC, 10)
        child_out = fcntl.fcntl(from_w, fcntl.F_DUPFD_CLOEXEC, 10)

        def place_fds() -> None:
            os.dup2(child_in, 3)
            os.dup2(child_out, 4)

        self.proc = subprocess.Popen([exe, *FLAGS, f"--user-data-dir={user_dir}", "about:blank"],
                                     preexec_fn=place_fds, close_fds=False, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for fd in (to_r, from_w, child_in, child_out):
            os.close(fd)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []

    def _message(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("chromium did not answer in time")
            if select.select([self._r], [], [], left)[0]:
                chunk = os.read(self._r, 1 << 20)
                if not chunk:
                    raise EOFError("chromium closed its DevTools pipe")
                self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, session: str | None = None, timeout: float = 60, **params) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._w, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._message(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._message(deadline))

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._w)
        os.close(self._r)


def open_page(exe: str, path: Path, tmp: Path) -> dict:
    """Load ``path`` and return its problems, requests, rendered DOM and a PNG screenshot."""
    browser = Browser(exe, tmp / "chromium-profile")
    try:
        target = browser.call("Target.createTarget", url="about:blank")["targetId"]
        session = browser.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Runtime", "Log", "Network", "Page"):
            browser.call(f"{domain}.enable", session=session)
        browser.call("Emulation.setDeviceMetricsOverride", session=session, width=1280, height=1600,
                     deviceScaleFactor=1, mobile=False)
        browser.call("Page.navigate", session=session, url=path.resolve().as_uri())
        browser.wait_for("Page.loadEventFired")
        dom = browser.call("Runtime.evaluate", session=session, returnByValue=True,
                           expression="document.documentElement.outerHTML")["result"]["value"]
        title = browser.call("Runtime.evaluate", session=session, returnByValue=True,
                             expression="document.title")["result"]["value"]
        shot = base64.b64decode(browser.call("Page.captureScreenshot", session=session, format="png")["data"])
    finally:
        browser.close()
    problems, requests = [], []
    for e in browser.events:
        method, params = e.get("method"), e.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert", "warning"):
            problems.append(f"console.{params['type']}: {[a.get('value') for a in params.get('args', [])]}")
        elif method == "Runtime.exceptionThrown":
            problems.append(f"exception: {params['exceptionDetails'].get('text')}")
        elif method == "Log.entryAdded" and params["entry"].get("level") in ("error", "warning"):
            problems.append(f"log {params['entry']['level']}: {params['entry'].get('text')}")
        elif method == "Network.requestWillBeSent":
            requests.append(params["request"]["url"])
    return {"problems": problems, "requests": requests, "dom": dom, "title": title, "screenshot": shot}


@pytest.fixture(scope="session")
def study(tmp_path_factory) -> tuple[Path, list[Path]]:
    """A real LORE run with its attention grid and locality plot, a real B-B-style run of another
    method, and downstream-task / bench results as those commands write them."""
    root = tmp_path_factory.mktemp("browser")
    data = write_imagefolder(root / "data", n_train=8, n_test=4)
    np.save(root / "K.npy", np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32))
    common = ["--backbone", "vit_small_patch16_224", "--no-pretrained", "--backbone-args", TINY,
              "--data", str(data), "--epochs", "1", "--batch-size", "16", "--img-size", "32",
              "--workers", "0", "--device", "cpu"]
    lore, vpt = root / "runs" / "lore", root / "runs" / "vpt"
    assert cli(["train", "--method", "lore", *common, "--out", str(lore),
                "--knowledge", f"file:{root / 'K.npy'}"]) == 0
    assert cli(["train", "--method", "vpt-deep", *common, "--out", str(vpt)]) == 0
    assert cli(["attention", "--run", str(lore), "--data", str(data), "--n", "4",
                "--out", str(lore / "attention.png")]) == 0
    assert cli(["locality", "--run", str(lore), "--data", str(data), "--n", "8"]) == 0
    tasks = root / "runs" / "tasks"
    for name, result in (
        ("retrieval", {"task": "retrieval", "dataset": "roxford5k", "easy": {"map": 0.61, "mp": [1.0]},
                       "medium": {"map": 0.418, "mp": [0.9]}, "hard": {"map": 0.171, "mp": [0.5]}}),
        ("correspondence", {"task": "correspondence", "dataset": "spair-71k/test", "pck": 0.2071,
                            "per_category": {"cat": 0.3}, "pairs": 12}),
        ("vos", {"task": "vos", "dataset": "davis-2017/val", "J": 0.54, "F": 0.57, "JF": 0.5562,
                 "per_object": {}}),
    ):
        (tasks / name).mkdir(parents=True)
        (tasks / name / "results.json").write_text(json.dumps(
            {**result, "method": "lore", "backbone": "vit_small_patch16_224"}))
    (tasks / "bench").mkdir()
    (tasks / "bench" / "bench.json").write_text(json.dumps({
        "methods": {"b-b": {"infer_images_per_s": 321.5, "train_images_per_s": 100.0, "peak_mem_mb": 50.0,
                            "gflops": 0.0061, "trainable_params": 0},
                    "lore": {"infer_images_per_s": 250.25, "train_images_per_s": 80.0, "peak_mem_mb": 60.0,
                             "gflops": 0.0073, "trainable_params": 70660}},
        "ratios": {"lore/b-b": {"infer_throughput": 0.7784, "gflops": 1.1967}}, "config": {}}))
    return root, [lore, vpt, tasks]


class Cells(HTMLParser):
    """The text of every table row of a page, in document order."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None:
            self.rows[-1].append("".join(self.cell).strip())
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def test_detector_sees_errors_and_requests(chromium: str, tmp_path: Path) -> None:
    """Negative control: the checks below would notice a broken page."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><head><title>bad</title></head><body>'
                   '<img src="missing.png"><script>console.error("boom"); throw new Error("x");</script>'
                   "</body></html>")
    page = open_page(chromium, bad, tmp_path)
    assert any("boom" in p for p in page["problems"])
    assert any(p.startswith("exception") for p in page["problems"])
    assert any("ERR_FILE_NOT_FOUND" in p for p in page["problems"])
    assert any(url.endswith("missing.png") for url in page["requests"])


def test_report_in_browser(chromium: str, study, tmp_path: Path) -> None:
    root, runs = study
    out = tmp_path / "report.html"
    assert cli(["report", *map(str, runs), "--out", str(out), "--title", "Browser study"]) == 0
    page = open_page(chromium, out, tmp_path)

    assert page["problems"] == []
    assert page["title"] == "Browser study"
    # nothing but the file itself and its inlined images was requested
    assert page["requests"][0] == out.resolve().as_uri()
    assert all(url.startswith("data:") for url in page["requests"][1:])
    assert len(page["requests"]) >= 1 + 2 + 2  # 2 training-curve plots, attention grid, locality

    # the rendered results table shows the runs' final.json numbers (accuracy in %)
    parser = Cells()
    parser.feed(page["dom"])
    header = next(r for r in parser.rows if r[:2] == ["method", "data"])
    results = parser.rows[parser.rows.index(header) + 1:parser.rows.index(header) + 3]
    for method, run in (("vpt-deep", runs[1]), ("lore", runs[0])):
        final = json.loads((run / "final.json").read_text())
        row = next(r for r in results if r[0] == method)
        assert row[header.index("data")] == f"{100 * final['test_acc1']:.2f}"
        assert any(r[0] == run.name and f"{final['trainable_params']:,}" in r for r in parser.rows)
    lore_row = next(r for r in results if r[0] == "lore")
    assert lore_row[header.index("roxford5k mAP M")] == "41.80"
    assert lore_row[header.index("spair-71k/test PCK@0.1")] == "20.71"
    assert lore_row[header.index("davis-2017/val J&F")] == "55.62"
    assert ["b-b", "321.5", "100.0", "50.0", "0.006", "0"] in parser.rows  # bench table
    best = max(json.loads((run / "final.json").read_text())["test_acc1"] for run in runs[:2])
    assert f"<strong>{100 * best:.2f}</strong>" in page["dom"]

    # a real picture: more than one colour, and not almost all background
    shot = Image.open(io.BytesIO(page["screenshot"])).convert("RGB")
    pixels = np.asarray(shot).reshape(-1, 3)
    assert shot.size == (1280, 1600)
    assert len(np.unique(pixels, axis=0)) > 50
    assert (pixels.min(axis=1) < 200).mean() > 0.02  # text, table lines and figures are drawn
