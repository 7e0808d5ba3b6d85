"""The HTML report, overlays and GIF/MP4 export, and the ``psg4d viz`` command."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from psg4d.cli import COMMANDS, main
from psg4d.data.schema import MaskTube, ObjectTrack, Relation, SceneGraph4D, Video4D
from psg4d.errors import DataError
from psg4d.viz.overlay import PALETTE, export_gif, export_mp4, object_colours, render_overlay_frames
from psg4d.viz.report import FALSE_POSITIVE, HIT, MISS, match_triplets, render_report, write_report

T, H, W = 10, 16, 16


def _tube(y0, y1, x0, x1, frames=range(T)) -> MaskTube:
    m = np.zeros((T, H, W), dtype=bool)
    for t in frames:
        m[t, y0:y1, x0:x1] = True
    return MaskTube.from_dense(m)


def _objects(names=("person", "cup", "table")) -> list[ObjectTrack]:
    tubes = [_tube(0, 8, 0, 8), _tube(2, 5, 10, 13, frames=range(2, 10)), _tube(12, 16, 0, 16)]
    return [ObjectTrack(object_id=i, category=n, tube=tb) for i, (n, tb) in enumerate(zip(names, tubes))]


def _pred(names=("person", "cup", "table")) -> SceneGraph4D:
    return SceneGraph4D(
        video_id="clip", num_frames=T, height=H, width=W, objects=_objects(names),
        relations=[
            Relation(0, 1, "holding", [(2, 5)], score=0.9),  # hit: GT [4, 8] overlaps
            Relation(1, 2, "on", [(0, 9)], score=0.8),  # hit
            Relation(0, 2, "touching", [(6, 9)], score=0.7),  # labels match GT but spans do not overlap
            Relation(2, 0, "near", [(0, 1)], score=0.1),  # ranked 4th: outside top_k=3
        ],
    ).validate()


def _gt() -> SceneGraph4D:
    return SceneGraph4D(
        video_id="clip", num_frames=T, height=H, width=W, objects=_objects(),
        relations=[
            Relation(0, 1, "holding", [(4, 8)]),
            Relation(1, 2, "on", [(0, 3)]),
            Relation(0, 2, "touching", [(0, 2)]),
            Relation(0, 1, "looking at", [(0, 9)]),
        ],
    ).validate()


def _video(n=T, h=H, w=W) -> Video4D:
    rgb = np.full((n, h, w, 3), 90, dtype=np.uint8)
    return Video4D(rgb=rgb, fps=5.0, video_id="clip")


def test_match_triplets_hits_false_positives_and_misses():
    rows = match_triplets(_pred(), _gt(), top_k=3)
    got = [(r.rank, r.subject, r.predicate, r.object, r.status) for r in rows]
    assert got == [
        (1, "person", "holding", "cup", HIT),
        (2, "cup", "on", "table", HIT),
        (3, "person", "touching", "table", FALSE_POSITIVE),
        (None, "person", "touching", "table", MISS),
        (None, "person", "looking at", "cup", MISS),
    ]
    assert rows[0].gt_spans == [(4, 8)] and rows[0].pred_spans == [(2, 5)]
    assert rows[2].gt_spans == []
    # without GT every shown prediction is just "predicted"
    assert {r.status for r in match_triplets(_pred(), None, top_k=10)} == {"predicted"}


def test_report_contents(tmp_path):
    metrics = {"R@20": 0.25, "per_predicate": {"holding": 1.0}}
    html_text = render_report(_pred(), _video(), gt=_gt(), metrics=metrics, top_k=3)
    # self-contained: the only URL is the SVG namespace
    urls = set(re.findall(r"https?://[^\s'\"<>)]+", html_text))
    assert urls <= {"http://www.w3.org/2000/svg"}, urls
    assert not re.search(r"<(link|img|script)[^>]+(src|href)=", html_text)
    # every object in the legend (with its overlay colour) and in the graph
    for o in _pred().objects:
        assert f"data-obj='{o.object_id}'" in html_text
        assert "#{:02x}{:02x}{:02x}".format(*PALETTE[o.object_id]) in html_text
        assert f"{o.category} #{o.object_id}" in html_text
    # the timeline: every shown prediction and every missed GT triplet, with its status
    tl = html_text[html_text.index("<svg id='timeline'") : html_text.index("</svg>", html_text.index("<svg id='timeline'"))]
    assert tl.count("class='tl-row hit'") == 2
    assert tl.count("class='tl-row false-positive'") == 1
    assert tl.count("class='tl-row miss'") == 2
    assert "#1 person \u2014holding\u2192 cup (0.90)" in tl
    assert "GT person \u2014looking at\u2192 cup" in tl
    assert "near" not in tl  # rank 4 > top_k
    # graph edges carry their spans for the frame highlighting
    assert "data-subject='0' data-object='1' data-spans='2-5'" in html_text
    # metrics (flattened) and the timeline summary
    assert "per_predicate.holding" in html_text and "R@20" in html_text
    assert "GT missed</td><td class='num'>2" in html_text
    data = json.loads(re.search(r'id="report-data">(.*?)</script>', html_text, re.S).group(1))
    assert data["num_frames"] == T and len(data["frames"]) == T and data["frames"][0].startswith("data:image/png;base64,")
    cup = data["objects"][1]
    assert cup["rles"][0] is None and cup["rles"][2] == _pred().objects[1].tube.rles[2]["counts"]


def test_report_escapes_user_text_and_subsamples_long_videos():
    pred = _pred(names=("<b>mug</b>", "__DATA_JSON__", "</script>"))
    html_text = render_report(pred, _video(), max_frames=4)
    assert "<b>mug</b>" not in html_text and "&lt;b&gt;mug&lt;/b&gt;" in html_text
    assert html_text.count("</script>") == 3  # the two scripts and the JSON block: none injected
    data = json.loads(re.search(r'id="report-data">(.*?)</script>', html_text, re.S).group(1))
    assert data["display_frames"] == [0, 3, 6, 9] and len(data["frames"]) == 4
    assert [o["category"] for o in data["objects"]] == ["<b>mug</b>", "__DATA_JSON__", "</script>"]


def test_report_rejects_misaligned_video(tmp_path):
    with pytest.raises(DataError, match="video has 7 frames but the scene graph 'clip' has 10"):
        render_report(_pred(), _video(n=7))
    with pytest.raises(DataError):
        write_report(tmp_path / "r.html", _pred(), _video(n=7))
    assert not list(tmp_path.iterdir())


def test_overlay_colours_and_scaling():
    pred = _pred()
    frames = render_overlay_frames(_video(h=32, w=32), pred)  # masks 16x16 on a 32x32 video
    assert frames.shape == (T, 32, 32, 3)
    colours = object_colours(pred)
    person = np.asarray(colours[0], float)
    inner = frames[0, 4:12, 4:12].astype(float)  # inside the upscaled person mask, off its outline
    assert np.allclose(inner, np.rint(0.5 * 90 + 0.5 * person), atol=1)
    # outlined in full colour where the mask meets other pixels (rows/cols 0..15 after upscaling)
    assert np.array_equal(frames[0, 15, 5], person.astype(np.uint8))
    assert np.array_equal(frames[0, 5, 15], person.astype(np.uint8))
    assert np.array_equal(frames[0, 10, 20], [90, 90, 90])  # background untouched
    assert np.array_equal(frames[0, 5, 22], [90, 90, 90]) and not np.array_equal(frames[2, 5, 22], [90, 90, 90])
    only_table = render_overlay_frames(_video(), pred, object_ids=[2])
    assert np.array_equal(only_table[0, 2, 2], [90, 90, 90])


def test_gif_and_mp4_export(tmp_path):
    pred, video = _pred(), _video(h=15, w=17)  # odd sides: the MP4 writer pads
    gif = export_gif(tmp_path / "o.gif", video, pred)
    with Image.open(gif) as im:
        assert im.size == (17, 15)
        # Pillow merges identical consecutive frames, adding up their durations: 5 fps -> 200 ms each
        total = 0
        for k in range(im.n_frames):
            im.seek(k)
            total += im.info["duration"]
        assert total == T * 200
        assert im.convert("RGB").getpixel((11, 3)) != (90, 90, 90)  # the cup, visible from frame 2 on
    mp4 = export_mp4(tmp_path / "o.mp4", video, pred)
    with av.open(str(mp4)) as c:
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(decoded) == T and decoded[0].shape == (16, 18, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.gif", "o.mp4"]


# --------------------------------------------------------------------------- CLI


def _write_inputs(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    frames = tmp_path / "rgb"
    frames.mkdir()
    for t in range(T):
        Image.fromarray(np.full((H, W, 3), 90, np.uint8)).save(frames / f"{t}.png")
    pred_p, gt_p, met_p = tmp_path / "pred.json", tmp_path / "gt.json", tmp_path / "metrics.json"
    _pred().save(pred_p)
    _gt().save(gt_p)
    met_p.write_text(json.dumps({"R@20": 0.5}))
    return frames, pred_p, gt_p, met_p


def test_viz_command_writes_report_gif_mp4(tmp_path, capsys):
    assert ("viz", "psg4d.viz.commands", "viz_command") in COMMANDS
    frames, pred_p, gt_p, met_p = _write_inputs(tmp_path)
    out = tmp_path / "out"
    rc = main(["viz", str(pred_p), "--video", str(frames), "--gt", str(gt_p), "--metrics", str(met_p),
               "--out", str(out / "report.html"), "--gif", str(out / "o.gif"), "--mp4", str(out / "o.mp4"),
               "--top-k", "3"])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["o.gif", "o.mp4", "report.html"]
    text = (out / "report.html").read_text()
    assert "class='tl-row miss'" in text and "R@20" in text


@pytest.mark.parametrize("problem", ["bad-video", "short-video", "bad-pred", "bad-metrics"])
def test_viz_command_bad_input_leaves_no_output(tmp_path, capsys, problem):
    frames, pred_p, gt_p, met_p = _write_inputs(tmp_path)
    video = str(frames)
    if problem == "bad-video":
        video = str(tmp_path / "broken.mp4")
        Path(video).write_bytes(b"not a video at all" * 20)
    elif problem == "short-video":
        (frames / "9.png").unlink()
    elif problem == "bad-pred":
        pred_p.write_text("{ not json")
    else:
        met_p.write_text("[1, 2]")
    out = tmp_path / "out"
    rc = main(["viz", str(pred_p), "--video", video, "--gt", str(gt_p), "--metrics", str(met_p),
               "--out", str(out / "report.html"), "--gif", str(out / "o.gif")])
    assert rc == 2
    err = capsys.readouterr().err
    expected = {"bad-video": "broken.mp4", "short-video": "9 frames", "bad-pred": "pred.json",
                "bad-metrics": "metrics.json"}[problem]
    assert err.startswith("error: ") and expected in err
    assert not out.exists() or not list(out.iterdir())


def test_viz_uses_prediction_frame_indices(tmp_path):
    frames, pred_p, _, _ = _write_inputs(tmp_path)
    for t in range(T, 2 * T):  # the video has 20 frames; the prediction used every other one
        Image.fromarray(np.full((H, W, 3), 90, np.uint8)).save(frames / f"{t}.png")
    pred = _pred()
    pred.meta["frame_indices"] = list(range(0, 2 * T, 2))
    pred.save(pred_p)
    assert main(["viz", str(pred_p), "--video", str(frames), "--out", str(tmp_path / "r.html")]) == 0
    data = json.loads(re.search(r'id="report-data">(.*?)</script>', (tmp_path / "r.html").read_text(), re.S).group(1))
    assert data["frame_indices"] == list(range(0, 2 * T, 2))


def test_viz_command_with_depth_embeds_depth_view(tmp_path):
    frames, pred_p, _, _ = _write_inputs(tmp_path)
    dfolder = tmp_path / "depth"
    dfolder.mkdir()
    for t in range(T):
        d = np.full((H, W), 2000, np.uint16)
        d[:, : W // 2] = 1000  # a near half and a far half, in millimetres
        Image.fromarray(d).save(dfolder / f"{t}.png")
    out = tmp_path / "r.html"
    assert main(["viz", str(pred_p), "--video", str(frames), "--depth", str(dfolder), "--out", str(out)]) == 0
    data = json.loads(re.search(r'id="report-data">(.*?)</script>', out.read_text(), re.S).group(1))
    assert data["depth_frames"] is not None and len(data["depth_frames"]) == T
    png = base64.b64decode(data["depth_frames"][0].split(",", 1)[1])
    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert not np.array_equal(img[0, 0], img[0, W - 1])  # near and far drawn in different colours
    # without depth the page has no depth view
    plain = render_report(_pred(), _video())
    assert '"depth_frames":null' in plain


def test_a_crowded_report_draws_the_objects_of_the_shown_relations_and_folds_the_rest():
    """With 40 objects and K = 2 shown relations, the graph draws the 3 objects those relations
    name; the legend lists them first and folds the other 37 away (still toggles)."""
    objects = [ObjectTrack(object_id=i, category=f"thing{i}", tube=_tube(0, 4, 0, 4)) for i in range(40)]
    pred = SceneGraph4D(video_id="clip", num_frames=T, height=H, width=W, objects=objects, relations=[
        Relation(5, 7, "on", [(0, 9)], score=0.9), Relation(7, 30, "near", [(0, 9)], score=0.8),
        Relation(1, 2, "near", [(0, 9)], score=0.1)]).validate()
    html_text = render_report(pred, _video(), top_k=2)
    graph = html_text[html_text.index("<svg id='scene-graph'"):html_text.index("</svg>", html_text.index("<svg id='scene-graph'"))]
    assert sorted(int(i) for i in re.findall(r"class='node' data-obj='(\d+)'", graph)) == [5, 7, 30]
    legend = html_text[html_text.index("id=\"legend\">"):html_text.index("</div>", html_text.index("id=\"legend\">"))]
    first, folded = legend.split("<details class='legend-more'>")
    assert re.findall(r"class='legend-item' data-obj='(\d+)'", first) == ["5", "7", "30"]
    assert "<summary>37 more objects</summary>" in folded
    assert len(re.findall(r"class='obj-toggle' data-obj='", folded)) == 37
    # K follows: with every relation shown, their 5 objects are drawn
    html_all = render_report(pred, _video(), top_k=3)
    assert len(re.findall(r"class='node' data-obj=", html_all)) == 5
    # no relation at all: a handful of lone nodes, not a ring of 40
    lone = replace_relations(pred, [])
    assert len(re.findall(r"class='node' data-obj=", render_report(lone, _video()))) == 12


def replace_relations(graph: SceneGraph4D, relations) -> SceneGraph4D:
    from dataclasses import replace

    return replace(graph, relations=list(relations))


def test_viz_reads_only_the_frames_the_report_shows(tmp_path, monkeypatch):
    """A 600-frame prediction with its frame record: `psg4d viz` decodes the 60 frames it embeds,
    not the 600 (memory does not grow with frames it does not show), and the player still maps
    every timeline frame to its source frame."""
    import psg4d.data.video_io as video_io

    n = 600
    video = tmp_path / "long.mp4"
    with av.open(str(video), "w") as c:
        s = c.add_stream("mpeg4", rate=25)
        s.height, s.width, s.pix_fmt = 32, 32, "yuv420p"
        for t in range(n):
            for pkt in s.encode(av.VideoFrame.from_ndarray(np.full((32, 32, 3), t % 250, np.uint8), format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    m = np.zeros((n, 32, 32), bool)
    m[:, 4:12, 4:12] = True
    pred = SceneGraph4D(video_id="long", num_frames=n, height=32, width=32,
                        objects=[ObjectTrack(object_id=0, category="cup", tube=MaskTube.from_dense(m)),
                                 ObjectTrack(object_id=1, category="table", tube=MaskTube.from_dense(m))],
                        relations=[Relation(0, 1, "on", [(0, n - 1)], score=1.0)],
                        meta={"frame_indices": list(range(n))}).validate()
    pred.save(tmp_path / "pred.json")
    decoded: list[int] = []
    load = video_io.load_video

    def counting(*args, **kw):
        v = load(*args, **kw)
        decoded.append(v.num_frames)
        return v

    monkeypatch.setattr(video_io, "load_video", counting)
    out = tmp_path / "r.html"
    assert main(["viz", str(tmp_path / "pred.json"), "--video", str(video), "--out", str(out),
                 "--display-frames", "60"]) == 0
    assert decoded == [60]
    data = json.loads(re.search(r"<script type=\"application/json\" id=\"report-data\">(.*?)</script>",
                                out.read_text(), re.S).group(1))
    assert data["num_frames"] == n and len(data["frames"]) == len(data["display_frames"]) == 60
    assert data["frame_indices"] == list(range(n)) and data["display_frames"][-1] == n - 1
    # an overlay of every frame still reads them all
    decoded.clear()
    assert main(["viz", str(tmp_path / "pred.json"), "--video", str(video), "--out", str(tmp_path / "r2.html"),
                 "--display-frames", "60", "--gif", str(tmp_path / "o.gif")]) == 0
    assert decoded == [n]
