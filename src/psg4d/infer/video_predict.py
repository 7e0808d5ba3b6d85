"""One user video -> one scene-graph JSON, on the video's own timeline.

How a video is read (:func:`plan_video`), decided before any frame is decoded:

* **Size.** Frames are scaled down while they are decoded (PyAV's scaler, JPEG
  draft mode) so that the shorter side is at most the model's ``image_size``
  (``--size`` sets it instead): the encoder sees that size anyway and the masks
  are upsampled from the decoder's smaller maps, so larger frames would cost
  memory (~0.3 GB per 4000x3000 frame) for nothing. Never scaled up. The masks
  written are at the source resolution (``--size`` given: at that size).
* **Timeline.** Every source frame (or every frame ``--fps`` keeps) is predicted:
  a video no longer than the model's ``max_frames`` in one pass; a longer one with
  :class:`~psg4d.infer.streaming.StreamingPredictor`: windows of ``window`` frames
  (default ``WINDOW_STEPS`` x ``max_frames``: the model reads every
  ``WINDOW_STEPS``-th frame of a window and each frame takes its nearest model
  frame's mask) every ``stride`` frames (default 3/4 of a window: the shared
  quarter, two model frames, is what identities are matched on, and each window
  costs one generation, so throughput grows with the stride), tracks stitched
  across windows, memory bounded by one window. ``--max-frames N`` instead samples
  N frames uniformly over the whole video for a single pass (the old behaviour).
* **Record.** The output's ``meta["frame_indices"]`` lists the source frame of
  every output frame and ``meta["sampling"]`` how they were chosen, so
  ``psg4d viz PRED --video VIDEO`` reads the same frames with no flags.
* **Name.** The prediction's ``video_id`` is ``--video-id``, else
  :func:`default_video_id`: the file's stem, or for a frame folder with a generic
  name (:data:`FRAME_FOLDER_NAMES`, e.g. PSG4D-HOI's ``<video>/align_rgb``) its
  parent's name, so ``psg4d eval`` can match it to the ground truth.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from psg4d.data.schema import SceneGraph4D
from psg4d.data.video_io import VideoInfo, capped_size, probe_video, select_positions, target_size
from psg4d.errors import ConfigError
from psg4d.families import VideoPredictor
from psg4d.infer.streaming import StreamingPredictor

log = logging.getLogger(__name__)

# Names of frame folders that say what the folder holds, not which video: a prediction of such a
# folder is named after its parent (PSG4D-HOI: HOI4D_release/<video>/align_rgb/).
FRAME_FOLDER_NAMES = frozenset({"align_rgb", "rgb", "color", "colour", "frames", "images", "image", "img", "imgs"})

# Source frames per model frame in a default streaming window: the model reads 1 frame in 4
# (at 25-30 fps: ~7 model frames per second of video), and a window costs one generation.
WINDOW_STEPS = 4


@dataclass(frozen=True, kw_only=True)
class ReadOptions:
    """How ``psg4d predict`` reads a video (the CLI flags)."""

    depth: Path | None = None
    depth_scale: float = 1000.0
    fps: float | None = None
    max_frames: int | None = None
    size: int | None = None
    window: int | None = None
    stride: int | None = None

    def check(self) -> None:
        """Refuse impossible values before any model is loaded or frame decoded."""
        for flag, value, low in (("--fps", self.fps, 0.0), ("--size", self.size, 0),
                                 ("--max-frames", self.max_frames, 0), ("--depth-scale", self.depth_scale, 0.0)):
            if value is not None and not value > low:
                raise ConfigError(f"{flag} must be positive, got {value:g}")
        if self.window is not None and self.window < 2:
            raise ConfigError(f"--window must be at least 2 frames, got {self.window}")
        if self.stride is not None and self.stride < 1:
            raise ConfigError(f"--stride must be at least 1 frame, got {self.stride}")
        if self.window is not None and self.stride is not None and self.stride >= self.window:
            raise ConfigError(f"--stride ({self.stride}) must be smaller than --window ({self.window}):"
                              " windows must share frames to keep object identities")


@dataclass(frozen=True, kw_only=True)
class VideoPlan:
    info: VideoInfo
    mode: str  # "whole" (one pass over every kept frame), "uniform" (--max-frames) or "streaming"
    size: int | None  # shorter side passed to the reader (None: native)
    hw: tuple[int, int]  # frame size read
    mask_hw: tuple[int, int]  # size of the masks written: the source's, unless --size asked for the read size
    num_frames: int  # output frames
    window: int
    stride: int

    def sampling_meta(self, opts: ReadOptions) -> dict:
        info = self.info
        return {
            "mode": self.mode, "source_frames": info.num_frames, "source_fps": info.fps, "fps": opts.fps,
            "max_frames": opts.max_frames, "source_size": [info.height, info.width], "size": list(self.hw),
            "mask_size": list(self.mask_hw),
            **({"window": self.window, "stride": self.stride} if self.mode == "streaming" else {}),
        }


def plan_video(rgb: Path, model_max_frames: int | None, image_size: int, opts: ReadOptions, *,
               info: VideoInfo | None = None) -> VideoPlan:
    """How ``rgb`` is read for a predictor whose one pass reads ``model_max_frames`` frames (None:
    any number, so the video is never streamed in windows) at shorter side ``image_size``."""
    info = info or probe_video(rgb)  # DataError for anything unreadable
    size = opts.size if opts.size is not None else capped_size(info.height, info.width, image_size)
    hw = target_size(info.height, info.width, size)
    # masks go back to the source resolution (what a dataset's ground truth is at): reading small
    # bounds the frames' memory, not the output's usefulness; an explicit --size keeps its size
    mask_hw = hw if opts.size is not None else (info.height, info.width)
    if opts.max_frames is not None:
        n = len(select_positions(info.num_frames, source_fps=info.fps, fps=opts.fps, max_frames=opts.max_frames))
        return VideoPlan(info=info, mode="uniform", size=size, hw=hw, mask_hw=mask_hw, num_frames=n, window=n,
                         stride=n)
    n = len(select_positions(info.num_frames, source_fps=info.fps, fps=opts.fps))
    if model_max_frames is None:
        return VideoPlan(info=info, mode="whole", size=size, hw=hw, mask_hw=mask_hw, num_frames=n, window=n, stride=n)
    window = opts.window or WINDOW_STEPS * model_max_frames
    stride = opts.stride or max(1, window * 3 // 4)
    if stride >= window:
        raise ConfigError(f"--stride ({stride}) must be smaller than the window ({window} frames)")
    mode = "whole" if n <= model_max_frames else "streaming"
    return VideoPlan(info=info, mode=mode, size=size, hw=hw, mask_hw=mask_hw, num_frames=n, window=window,
                     stride=stride)


def default_video_id(path: Path) -> str:
    """The id a prediction of ``path`` gets without ``--video-id`` (see the module docstring)."""
    path = Path(path)
    if path.is_dir() and path.name.lower() in FRAME_FOLDER_NAMES:
        parent = path.resolve().parent.name
        if parent:
            return parent
    return path.stem


@dataclass(frozen=True, kw_only=True)
class VideoResult:
    out: Path
    video_id: str
    num_frames: int
    num_objects: int
    num_relations: int
    mode: str


def predict_video(predictor: VideoPredictor, rgb: Path, out: Path, opts: ReadOptions, *,
                  plan: VideoPlan | None = None, progress: bool = True, video_id: str | None = None) -> VideoResult:
    """Predict ``rgb`` (a video file or frame folder) into ``out`` (atomically) following its plan
    (default: :func:`plan_video` for ``predictor``), with the predictor of any model family (a
    streamed video keeps its ``max_candidates`` best relations of the whole video). ``video_id``:
    default :func:`default_video_id`."""
    from psg4d.data.video_io import iter_frames, load_video

    if plan is None:
        plan = plan_video(rgb, predictor.max_frames, predictor.image_size, opts)
    meta = {"sampling": plan.sampling_meta(opts)}
    if video_id is None:
        video_id = default_video_id(plan.info.path)
        how = "its parent folder's name" if video_id != plan.info.path.stem else "its name"
        log.info("%s: video id %r (%s; --video-id sets it)", plan.info.path, video_id, how)
    else:
        log.info("%s: video id %r (--video-id)", plan.info.path, video_id)
    log.info("%s: %d of %d source frames at %dx%d, %s", video_id, plan.num_frames, plan.info.num_frames,
             plan.hw[1], plan.hw[0], plan.mode if plan.mode != "streaming" else
             f"streaming (windows of {plan.window} frames every {plan.stride})")
    if plan.mode == "streaming":
        # the cap is the video's: each window keeps as many, and the stitched list is cut again
        streamer = StreamingPredictor(predict_window=partial(predictor.predict, mask_size=plan.mask_hw),
                                      window=plan.window, stride=plan.stride,
                                      max_relations=predictor.max_candidates, progress=progress)
        frames = iter_frames(rgb, depth=opts.depth, depth_scale=opts.depth_scale, fps=opts.fps, size=plan.size,
                             info=plan.info)
        fps = plan.info.fps if opts.fps is None else min(opts.fps, plan.info.fps)
        s = streamer.run(frames, out_path=out, video_id=video_id, fps=fps, total_frames=plan.num_frames, meta=meta)
        return VideoResult(out=out, video_id=video_id, num_frames=s.num_frames, num_objects=s.num_objects,
                           num_relations=s.num_relations, mode=plan.mode)
    video = load_video(rgb, depth=opts.depth, depth_scale=opts.depth_scale, fps=opts.fps,
                       max_frames=opts.max_frames, size=plan.size, video_id=video_id)
    graph = predictor.predict(video, mask_size=plan.mask_hw)
    graph.meta.update(meta, frame_indices=[int(i) for i in video.frame_indices])
    graph.save(out)
    return VideoResult(out=out, video_id=video_id, num_frames=graph.num_frames, num_objects=len(graph.objects),
                       num_relations=len(graph.relations), mode=plan.mode)


def write_prediction_report(pred_path: Path, rgb: Path, opts: ReadOptions) -> Path:
    """The HTML report next to a written prediction, reading the video the way the prediction did."""
    from psg4d.viz.make import load_video_for
    from psg4d.viz.report import write_report

    graph = SceneGraph4D.load(pred_path)
    video = load_video_for(graph, rgb, depth=opts.depth, depth_scale=opts.depth_scale)
    target = pred_path.with_suffix(".html")
    write_report(target, graph, video)
    return target


def finished(out: Path) -> bool:
    """A prediction already written (outputs are atomic: a file that exists is complete)."""
    return out.is_file() and os.path.getsize(out) > 0
