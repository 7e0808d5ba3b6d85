"""``psg4d predict`` as one library call: :class:`PredictRequest` (what the command's flags say) and
:func:`run_predict`.

Every check that needs no model comes first (flags, paths, the video's header and its depth maps),
so a bad flag or path costs nothing. Then one video (or a folder of videos: batch mode,
:mod:`psg4d.infer.batch`) is predicted with a 4D-LLM or a pipeline-baseline checkpoint.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from psg4d.data.video_io import VIDEO_EXTS, VideoInfo, probe_video
from psg4d.errors import ConfigError, DataError
from psg4d.infer.batch import dist_rank, run_batch
from psg4d.infer.predictor import PREDICT_MODES, PredictorConfig
from psg4d.infer.predictor_factory import build_predictor, load_vocabulary, resolve_mode
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
    """Predict and write what ``req`` asks for; user errors are :class:`ConfigError` / :class:`DataError`."""
    req.check()
    vocabulary = load_vocabulary(req.vocab) if req.vocab is not None else None
    batch, info = _check_inputs(req)
    if not batch and dist_rank()[0] > 0:
        # under torchrun one video is one piece of work: rank 0 writes it, the others must not race it
        log.info("rank %d of %d: a single video is predicted by rank 0 only", *dist_rank())
        return
    from psg4d.baseline.predict import is_pipeline_checkpoint

    if is_pipeline_checkpoint(req.ckpt):
        if batch:
            raise ConfigError(f"{req.ckpt}: a pipeline-baseline checkpoint; batch mode runs 4D-LLM checkpoints. "
                              "Predict a dataset split with `psg4d eval --ckpt CKPT --data DIR --split S "
                              "--save-pred P.jsonl`")
        if req.mode != "auto" or vocabulary is not None:
            raise ConfigError("--mode and --vocab are the 4D-LLM's; a pipeline-baseline checkpoint predicts one way")
        _predict_pipeline(req, info)
        return
    from psg4d.model.psg4d_llm import PSG4DModel

    model = PSG4DModel.from_pretrained(req.ckpt)
    cfg = PredictorConfig(max_new_tokens=req.max_new_tokens, max_candidates=req.candidates, threads=req.threads,
                          mode=resolve_mode(req.mode, model.config, model.checkpoint_dir), vocabulary=vocabulary)
    log.info("prediction mode: %s", cfg.mode)
    if req.read.depth is None and model.estimators is not None:
        log.info("no depth given: depth features are estimated from RGB by the checkpoint's depth estimator (F_de)")
    elif req.read.depth is None:
        log.warning(
            "no depth given: RGB-only mode. The encoder's aggregator uses the RGB branch alone; depth is not"
            " estimated (this checkpoint has no 2D-to-4D transfer estimators: train the transfer stages for them)."
        )
    if batch:
        _predict_batch(req, model, cfg)
        return
    plan = plan_video(req.rgb, model.config.max_frames, model.config.image_size, req.read, info=info)
    res = predict_video(build_predictor(model, cfg), req.rgb, req.out, req.read, plan=plan, video_id=req.video_id)
    if req.report:
        write_prediction_report(req.out, req.rgb, req.read)
    log.info("%s: %d frames (%s), %d objects, %d ranked relations -> %s", res.video_id, res.num_frames, res.mode,
             res.num_objects, res.num_relations, req.out)


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


def _predict_batch(req: PredictRequest, model, cfg: PredictorConfig) -> None:
    """Every video of the folder ``req.rgb`` -> ``req.out/<name>.json`` (workers, or torchrun ranks)."""
    from psg4d.utils.threads import available_cpus

    videos = video_files(req.rgb)
    # under torchrun every rank is one worker (psg4d.infer.batch)
    n_workers = 1 if dist_rank()[1] > 1 else req.workers or max(1, available_cpus() // 4)
    local = None if n_workers > 1 else build_predictor(model, cfg)
    # worker processes load their own copy: the parent's only proved the checkpoint loads (a clear
    # error here instead of a broken pool) and must not sit in memory beside theirs
    del model
    result = run_batch(videos, req.out, ckpt=req.ckpt, predictor=local, config=cfg, opts=req.read,
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


def _predict_pipeline(req: PredictRequest, info: VideoInfo | None) -> None:
    """A pipeline-baseline checkpoint: the whole video in one pass (the tracker follows any length;
    the relation model reads long videos at evenly spaced frames)."""
    from psg4d.baseline.predict import PipelinePredictor
    from psg4d.utils.threads import AdaptiveThreads

    AdaptiveThreads(req.threads)()
    predictor = PipelinePredictor.from_pretrained(req.ckpt)
    predictor.config.relation.top_k = min(predictor.config.relation.top_k, req.candidates)
    if req.read.depth is None and predictor.config.segmenter.use_depth:
        log.warning("no depth given: the pipeline's depth branch reads every pixel as unknown depth"
                    " (meta depth_source 'none')")
    # no streaming windows: "max_frames" is unbounded for the pipeline
    plan = plan_video(req.rgb, 2**62, predictor.config.segmenter.image_size, req.read, info=info)
    res = predict_video(predictor, req.rgb, req.out, req.read, plan=plan, video_id=req.video_id)
    if req.report:
        write_prediction_report(req.out, req.rgb, req.read)
    log.info("%s: %d frames (pipeline), %d objects, %d ranked relations -> %s", res.video_id, res.num_frames,
             res.num_objects, res.num_relations, req.out)
