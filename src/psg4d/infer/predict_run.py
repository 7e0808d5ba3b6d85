"""``psg4d predict`` as one library call: :class:`PredictRequest` (what the command's flags say) and
:func:`run_predict`.

Every check that needs no model comes first (flags, paths, the video's header and its depth maps),
so a bad flag or path costs nothing. Then one video (or a folder of videos: batch mode,
:mod:`psg4d.infer.batch`) is predicted with a checkpoint of any model family (the 4D-LLM, the
pipeline baseline: :mod:`psg4d.families`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from psg4d.data.video_io import VIDEO_EXTS, VideoInfo, probe_video
from psg4d.errors import ConfigError, DataError
from psg4d.infer.batch import dist_rank, run_batch
from psg4d.families import Family, PredictOptions, family_of_checkpoint
from psg4d.infer.predictor import PREDICT_MODES
from psg4d.infer.predictor_factory import load_vocabulary
from psg4d.infer.video_predict import ReadOptions, plan_video, predict_video, write_prediction_report
from psg4d.utils.io import atomic_write_text, check_output_file, check_output_folder

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class PredictRequest:
    """One ``psg4d predict`` call (see the command's help for each flag)."""

    ckpt: Path
    rgb: Path  # a folder of frames, a video file, or a folder of video files (batch mode)
    out: Path  # the JSON (a folder in batch mode)
    read: ReadOptions = field(default_factory=ReadOptions)
    max_new_tokens: int | None = None
    candidates: int = 300
    report: bool = False
    threads: int | None = None
    workers: int | None = None
    mode: str = "auto"
    vocab: Path | None = None
    namer: str | None = None
    video_id: str | None = None

    def check(self) -> None:
        """Refuse impossible flag values (no file is read)."""
        self.read.check()
        for flag, value in (("--candidates", self.candidates), ("--threads", self.threads),
                            ("--workers", self.workers), ("--max-new-tokens", self.max_new_tokens)):
            if value is not None and value < 1:
                raise ConfigError(f"{flag} must be at least 1, got {value}")
        if self.mode not in (*PREDICT_MODES, "auto"):
            raise ConfigError(f"--mode must be one of {', '.join(PREDICT_MODES)} or auto, got {self.mode!r}")


def video_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTS)


def run_predict(req: PredictRequest) -> None:
    """Predict and write what ``req`` asks for with a checkpoint of any model family
    (:mod:`psg4d.families`); user errors are :class:`ConfigError` / :class:`DataError`."""
    req.check()
    vocabulary = load_vocabulary(req.vocab) if req.vocab is not None else None
    batch, info = _check_inputs(req)
    if not batch and dist_rank()[0] > 0:
        # under torchrun one video is one piece of work: rank 0 writes it, the others must not race it
        log.info("rank %d of %d: a single video is predicted by rank 0 only", *dist_rank())
        return
    family = family_of_checkpoint(req.ckpt)
    options = PredictOptions(max_new_tokens=req.max_new_tokens, max_candidates=req.candidates, threads=req.threads,
                             mode=req.mode, vocabulary=vocabulary, namer=req.namer,
                             depth_given=req.read.depth is not None)
    if batch:
        _predict_batch(req, family, options)
        return
    predictor = family.load_predictor(req.ckpt, options)
    plan = plan_video(req.rgb, predictor.max_frames, predictor.image_size, req.read, info=info)
    res = predict_video(predictor, req.rgb, req.out, req.read, plan=plan, video_id=req.video_id)
    if req.report:
        write_prediction_report(req.out, req.rgb, req.read)
    log.info("%s: %d frames (%s, %s), %d objects, %d ranked relations -> %s", res.video_id, res.num_frames,
             family.title, res.mode, res.num_objects, res.num_relations, req.out)


def _check_inputs(req: PredictRequest) -> tuple[bool, VideoInfo | None]:
    """(batch mode?, the single video's header): the paths, the output, and for one video its
    header and its depth maps' count and values, before any model loads."""
    from psg4d.data.depth_io import DepthSource

    rgb, depth = req.rgb, req.read.depth
    if not rgb.exists():
        raise DataError(rgb, "video not found")
    batch = rgb.is_dir() and bool(video_files(rgb))
    if batch and depth is not None:
        raise DataError(depth, "--depth is for a single video; batch mode over a folder of videos is RGB-only")
    if req.video_id is not None and (batch or not req.video_id.strip()):
        raise ConfigError("--video-id names one video: give a non-empty id" if not batch else
                          "--video-id names one video; in batch mode each video is named after its file")
    (check_output_folder if batch else check_output_file)(req.out)
    if req.report and not batch:
        check_output_file(req.out.with_suffix(".html"))
    if batch:
        return True, None
    info = probe_video(rgb)
    if depth is not None:
        dsrc = DepthSource(depth, depth_scale=req.read.depth_scale)
        dsrc.check_count(info.num_frames, info.path)
        dsrc.check_sample(info.num_frames, (info.height, info.width))
    return False, info


def _predict_batch(req: PredictRequest, family: Family, options: PredictOptions) -> None:
    """Every video of the folder ``req.rgb`` -> ``req.out/<name>.json`` (workers, or torchrun ranks)."""
    from psg4d.utils.threads import available_cpus

    videos = video_files(req.rgb)
    # under torchrun every rank is one worker (psg4d.infer.batch)
    n_workers = 1 if dist_rank()[1] > 1 else req.workers or max(1, available_cpus() // 4)
    # the parent loads the checkpoint once either way: a clear error here instead of a broken pool.
    # Worker processes load their own copy, so the parent's must not sit in memory beside theirs.
    local = family.load_predictor(req.ckpt, options)
    if n_workers > 1:
        local = None
    result = run_batch(videos, req.out, ckpt=req.ckpt, predictor=local, options=options, opts=req.read,
                       report=req.report, workers=n_workers)
    log.info("%d predicted, %d already done, %d failed -> %s", len(result.done), len(result.skipped),
             len(result.failed), req.out)
    if result.failed:
        msg = f"{len(result.failed)} of {len(videos)} videos failed: " + "; ".join(e for _, e in result.failed)
        rank, world = dist_rank()
        if world > 1:
            # a non-zero exit makes torchrun stop every other rank mid-video: list, log, exit 0
            listing = req.out / f"failed.rank{rank}.txt"
            atomic_write_text(listing, "".join(f"{v}\t{e}\n" for v, e in result.failed))
            log.error("rank %d: %s (listed in %s)", rank, msg, listing)
            return
        raise DataError(req.rgb, msg)
