"""The report in a real headless Chromium: it renders, overlays show, highlighting follows the frame,
object toggles work, and no script error occurs."""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from conftest import missing_setup_dependency
from PIL import Image

from _fixtures_colour_baseline import DEFAULT_PALETTE, ColourSegmentationPredictor, moving_blocks
from psg4d.data.video_io import load_video
from psg4d.viz.overlay import object_colours
from psg4d.viz.report import write_report

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def chromium() -> str:
    """The browser: the tests skip without it, and fail in CI (conftest.py)."""
    if CHROMIUM is None:
        missing_setup_dependency("chromium", "Debian's chromium renders the report headless")
    return CHROMIUM


needs_chromium = pytest.mark.usefixtures("chromium")


def _chromium(tmp: Path, url: str, *extra: str) -> subprocess.CompletedProcess:
    profile = tmp / "profile"
    profile.mkdir(exist_ok=True)
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={profile}",
        # virtual time: the page's scripts and image decoding finish before the capture
        "--virtual-time-budget=4000", *extra, url,
    ]
    # subprocess.run waits for exit (and kills it on timeout): no browser outlives the test
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90)


class _Dom(HTMLParser):
    def __init__(self):
        super().__init__()
        self.html_attrs: dict = {}
        self.body_attrs: dict = {}
        self.edges: list[dict] = []
        self.absent_nodes: set[int] = set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        cls = (a.get("class") or "").split()
        if tag == "html":
            self.html_attrs = a
        elif tag == "body":
            self.body_attrs = a
        elif tag == "g" and "edge" in cls:
            self.edges.append({"s": int(a["data-subject"]), "o": int(a["data-object"]), "active": "active" in cls})
        elif tag == "g" and "node" in cls and "absent" in cls:
            self.absent_nodes.add(int(a["data-obj"]))


def _dom(tmp: Path, url: str) -> _Dom:
    res = _chromium(tmp, url, "--dump-dom")
    assert res.returncode == 0, res.stderr[-2000:]
    d = _Dom()
    d.feed(res.stdout)
    return d


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    frames = tmp / "rgb"
    frames.mkdir()
    for f in moving_blocks(30, size=48, period=30, with_depth=False):
        Image.fromarray(f.rgb).save(frames / f"{f.index:03d}.png")
    video = load_video(frames)
    pred = ColourSegmentationPredictor().predict(video)
    path = write_report(tmp / "report.html", pred, video, gt=pred, metrics={"R@20": 1.0})
    return tmp, path, pred


@needs_chromium
def test_report_in_browser_highlights_current_frame_without_errors(report):
    tmp, path, pred = report
    frame = 12
    dom = _dom(tmp, f"{path.as_uri()}#frame={frame}")
    assert dom.html_attrs.get("data-js-errors") == "0"
    assert dom.body_attrs.get("data-ready") == "1" and dom.body_attrs.get("data-frame") == str(frame)
    active_pairs = {(r.subject_id, r.object_id) for r in pred.ranked()[:20]
                    if any(a <= frame <= b for a, b in r.spans)}
    assert active_pairs  # the check below is not vacuous
    assert {(e["s"], e["o"]) for e in dom.edges if e["active"]} == active_pairs
    assert not dom.absent_nodes  # every block is visible at this frame


@needs_chromium
def test_error_capture_detects_script_errors(report, tmp_path):
    _, path, _ = report
    broken = tmp_path / "broken.html"
    broken.write_text(path.read_text().replace("</body>", "<script>undefinedFunction();</script></body>"))
    dom = _dom(tmp_path, broken.as_uri())
    assert dom.html_attrs.get("data-js-errors") == "1"


def _near(img: np.ndarray, colour, tol: float) -> int:
    return int((np.abs(img.astype(int) - np.asarray(colour)).max(axis=-1) <= tol).sum())


@needs_chromium
def test_screenshot_shows_frames_overlays_and_toggles(report):
    tmp, path, pred = report
    colours = object_colours(pred)
    red_id = next(o.object_id for o in pred.objects if o.category == "red block")
    # what the canvas shows inside the red block: its colour blended half-and-half with the tube's
    blended = np.rint(0.5 * np.asarray(DEFAULT_PALETTE["red block"]) + 0.5 * np.asarray(colours[red_id]))

    shots = {}
    for name, fragment in (("all", "#frame=3"), ("hidden", f"#frame=3&hide={red_id}")):
        out = tmp / f"{name}.png"
        res = _chromium(tmp, path.as_uri() + fragment, f"--screenshot={out}", "--window-size=1200,900")
        assert res.returncode == 0 and out.exists(), res.stderr[-2000:]
        shots[name] = np.asarray(Image.open(out).convert("RGB"))
    img = shots["all"]
    assert img.shape[:2] == (900, 1200)
    flat = img.reshape(-1, 3)
    assert len(np.unique(flat, axis=0)) > 200  # text, graph, timeline, video: not a blank page
    assert _near(img, (90, 90, 90), 3) > 50_000  # the video's background, scaled up on the canvas
    assert _near(img, blended, 4) > 2_000  # the red block under its tube's overlay
    for o in pred.objects:  # legend swatches and graph nodes in each tube colour
        assert _near(img, colours[o.object_id], 2) > 100, o.category
    # switched off: the red block shows in its own colour, no overlay on it
    assert _near(shots["hidden"], blended, 4) < 50
    assert _near(shots["hidden"], DEFAULT_PALETTE["red block"], 4) > 2_000


@needs_chromium
def test_a_mask_smaller_than_the_frame_is_drawn_with_soft_edges(tmp_path):
    """A prediction read small (8x8 masks) over a 96x96 video: the overlay is scaled up smoothly,
    so its edge is a ramp of shades, not the 8x8 grid's blocks."""
    from psg4d.data.schema import MaskTube, ObjectTrack, SceneGraph4D, Video4D

    n, size = 2, 96
    video = Video4D(rgb=np.full((n, size, size, 3), 90, np.uint8), fps=5.0, video_id="small")
    m = np.zeros((n, 8, 8), bool)
    m[:, 1:7, 1:7] = True
    pred = SceneGraph4D(video_id="small", num_frames=n, height=8, width=8,
                        objects=[ObjectTrack(object_id=0, category="cup", tube=MaskTube.from_dense(m))],
                        relations=[]).validate()
    path = write_report(tmp_path / "small.html", pred, video)
    out = tmp_path / "small.png"
    res = _chromium(tmp_path, path.as_uri() + "#frame=0", f"--screenshot={out}", "--window-size=1200,900")
    assert res.returncode == 0 and out.exists(), res.stderr[-2000:]
    img = np.asarray(Image.open(out).convert("RGB")).astype(int)
    colour = np.asarray(object_colours(pred)[0])
    blended = np.rint(0.5 * 90 + 0.5 * colour)
    # shades strictly between the grey frame and the blended overlay: the soft edge
    t = ((img - 90) * (blended - 90)).sum(-1) / max(float(((blended - 90) ** 2).sum()), 1.0)
    on_line = np.abs(img - (90 + t[..., None] * (blended - 90))).max(-1) <= 3
    ramp = on_line & (t > 0.15) & (t < 0.85)
    assert _near(img, blended, 4) > 2_000  # the overlay is there
    assert ramp.sum() > 500, ramp.sum()
