"""``psg4d predict``: a trained checkpoint + an RGB(-D) video -> a ranked 4D scene graph (JSON).

``--rgb`` is a folder of frames, a video file, or a folder of video files (batch
mode, :mod:`psg4d.infer.batch`: ``--out`` is then a folder and each video gives
``OUT/<name>.json``). How a video is read and streamed: :mod:`psg4d.infer.video_predict`.
Mask tubes are stored in the JSON as per-frame COCO RLEs; ``--report`` adds the
visual HTML report next to each prediction.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

from psg4d.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def _video_files(folder: Path) -> list[Path]:
    from psg4d.data.video_io import VIDEO_EXTS

    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTS)


def predict_command(
    ckpt: Path = typer.Option(..., "--ckpt", help="Checkpoint folder written by training (save_pretrained)."),
    rgb: Path = typer.Option(..., "--rgb", help="Folder of RGB frames, a video file, or a folder of video files."),
    out: Path = typer.Option(..., "--out", help="Output scene-graph JSON (a folder in batch mode)."),
    depth: Optional[Path] = typer.Option(None, "--depth", help="Folder of depth frames (.npy metres or 16-bit png)."),
    depth_scale: float = typer.Option(1000.0, "--depth-scale", help="16-bit depth png units per metre."),
    fps: Optional[float] = typer.Option(None, "--fps", help="Resample the video to this frame rate first."),
    max_frames: Optional[int] = typer.Option(
        None, "--max-frames",
        help="Sample this many frames uniformly and predict them in one pass (default: every frame, streamed"
             " in windows when the video is longer than the model's max_frames).",
    ),
    size: Optional[int] = typer.Option(
        None, "--size", help="Shorter side of the frames read (default: the model's image_size, never upscaled).",
    ),
    window: Optional[int] = typer.Option(
        None, "--window", help="Streaming window in frames (default: 4 x the model's max_frames)."
    ),
    stride: Optional[int] = typer.Option(
        None, "--stride", help="Frames between streaming windows (default: 3/4 of a window)."
    ),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="Generation length limit."),
    candidates: int = typer.Option(300, "--candidates", help="Keep at most this many ranked relations."),
    report: bool = typer.Option(False, "--report", help="Also write the HTML report next to each prediction."),
    threads: Optional[int] = typer.Option(
        None, "--threads", help="torch threads (default: the CPUs this process may use that others leave free)."
    ),
    workers: Optional[int] = typer.Option(
        None, "--workers",
        help="Batch mode outside torchrun: local worker processes (default: one per 4 CPUs, at least 1).",
    ),
    mode: str = typer.Option(
        "auto", "--mode",
        help="direct (one scene-graph text), chain (describe -> pairs -> relation -> span, open vocabulary;"
             " needs a checkpoint trained with model.chain_prob > 0) or auto (the one psg4d tune-ranking chose on"
             " validation for this checkpoint; direct where none was chosen).",
    ),
    vocab: Optional[Path] = typer.Option(
        None, "--vocab",
        help="Chain mode: class names (a text file, one per line, or a dataset folder) for objects of kinds"
             " training never named (default: such objects are named in free text).",
    ),
    video_id: Optional[str] = typer.Option(
        None, "--video-id",
        help="The prediction's video id, what `psg4d eval` matches to the ground truth (default: the file's"
             " name; for a frame folder named like align_rgb, rgb or frames, its parent folder's name).",
    ),
) -> None:
    """Predict the 4D scene graph of one video (or a folder of videos) and write it as JSON.

    Every source frame gets masks and spans; the JSON records the frames read for `psg4d viz`.
    """
    from psg4d.data.depth_io import DepthSource
    from psg4d.utils.io import check_output_file, check_output_folder
    from psg4d.data.video_io import probe_video
    from psg4d.infer.batch import dist_rank, run_batch
    from psg4d.infer.predictor_factory import build_predictor, load_vocabulary, resolve_mode
    from psg4d.infer.predictor import PREDICT_MODES, PredictorConfig
    from psg4d.infer.video_predict import ReadOptions, plan_video, predict_video, write_prediction_report
    from psg4d.model.psg4d_llm import PSG4DModel
    from psg4d.utils.io import atomic_write_text
    from psg4d.utils.threads import available_cpus

    # every check that needs no model comes first: a bad flag or path costs nothing
    opts = ReadOptions(depth=depth, depth_scale=depth_scale, fps=fps, max_frames=max_frames, size=size,
                       window=window, stride=stride)
    opts.check()
    for flag, value in (("--candidates", candidates), ("--threads", threads), ("--workers", workers),
                        ("--max-new-tokens", max_new_tokens)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be at least 1, got {value}")
    if mode not in (*PREDICT_MODES, "auto"):
        raise ConfigError(f"--mode must be one of {', '.join(PREDICT_MODES)} or auto, got {mode!r}")
    vocabulary = load_vocabulary(vocab) if vocab is not None else None
    if not rgb.exists():
        raise DataError(rgb, "video not found")
    batch = rgb.is_dir() and bool(_video_files(rgb))
    if batch and depth is not None:
        raise DataError(depth, "--depth is for a single video; batch mode over a folder of videos is RGB-only")
    if video_id is not None and (batch or not video_id.strip()):
        raise ConfigError("--video-id names one video: give a non-empty id" if not batch else
                          "--video-id names one video; in batch mode each video is named after its file")
    (check_output_folder if batch else check_output_file)(out)
    if report and not batch:
        check_output_file(out.with_suffix(".html"))
    info = None
    if not batch:
        # the header, and the depth maps' count and values: an unreadable input fails before the model loads
        info = probe_video(rgb)
        if depth is not None:
            dsrc = DepthSource(depth, depth_scale=depth_scale)
            dsrc.check_count(info.num_frames, info.path)
            dsrc.check_sample(info.num_frames, (info.height, info.width))

    if not batch and dist_rank()[0] > 0:
        # under torchrun one video is one piece of work: rank 0 writes it, the others must not race it
        log.info("rank %d of %d: a single video is predicted by rank 0 only", *dist_rank())
        return
    from psg4d.baseline.predict import is_pipeline_checkpoint

    if is_pipeline_checkpoint(ckpt):
        if batch:
            raise ConfigError(f"{ckpt}: a pipeline-baseline checkpoint; batch mode runs 4D-LLM checkpoints. Predict "
                              "a dataset split with `psg4d eval --ckpt CKPT --data DIR --split S --save-pred P.jsonl`")
        if mode != "auto" or vocabulary is not None:
            raise ConfigError("--mode and --vocab are the 4D-LLM's; a pipeline-baseline checkpoint predicts one way")
        _predict_pipeline(ckpt, rgb, out, opts, info, candidates=candidates, threads=threads, report=report,
                          video_id=video_id)
        return
    model = PSG4DModel.from_pretrained(ckpt)
    cfg = PredictorConfig(max_new_tokens=max_new_tokens, max_candidates=candidates, threads=threads,
                          mode=resolve_mode(mode, model.config, model.checkpoint_dir), vocabulary=vocabulary)
    log.info("prediction mode: %s", cfg.mode)
    if depth is None and model.estimators is not None:
        log.info("no depth given: depth features are estimated from RGB by the checkpoint's depth estimator (F_de)")
    elif depth is None:
        log.warning(
            "no depth given: RGB-only mode. The encoder's aggregator uses the RGB branch alone; depth is not"
            " estimated (this checkpoint has no 2D-to-4D transfer estimators: train the transfer stages for them)."
        )
    if batch:
        videos = _video_files(rgb)
        # under torchrun every rank is one worker (psg4d.infer.batch)
        n_workers = 1 if dist_rank()[1] > 1 else workers or max(1, available_cpus() // 4)
        local = None if n_workers > 1 else build_predictor(model, cfg)
        # worker processes load their own copy: the parent's only proved the checkpoint loads (a clear
        # error here instead of a broken pool) and must not sit in memory beside theirs
        del model
        result = run_batch(videos, out, ckpt=ckpt, predictor=local, config=cfg, opts=opts, report=report,
                           workers=n_workers)
        log.info("%d predicted, %d already done, %d failed -> %s", len(result.done), len(result.skipped),
                 len(result.failed), out)
        if result.failed:
            msg = f"{len(result.failed)} of {len(videos)} videos failed: " + "; ".join(e for _, e in result.failed)
            rank, world = dist_rank()
            if world > 1:
                # a non-zero exit makes torchrun stop every other rank mid-video: list, log, exit 0
                listing = out / f"failed.rank{rank}.txt"
                atomic_write_text(listing, "".join(f"{v}\t{e}\n" for v, e in result.failed))
                log.error("rank %d: %s (listed in %s)", rank, msg, listing)
                return
            raise DataError(rgb, msg)
        return
    plan = plan_video(rgb, model.config.max_frames, model.config.image_size, opts, info=info)
    res = predict_video(build_predictor(model, cfg), rgb, out, opts, plan=plan, video_id=video_id)
    if report:
        write_prediction_report(out, rgb, opts)
    log.info("%s: %d frames (%s), %d objects, %d ranked relations -> %s", res.video_id, res.num_frames, res.mode,
             res.num_objects, res.num_relations, out)


def _predict_pipeline(ckpt: Path, rgb: Path, out: Path, opts, info, *, candidates: int, threads: int | None,
                      report: bool, video_id: str | None) -> None:
    """``psg4d predict`` with a pipeline-baseline checkpoint: the whole video in one pass (the tracker
    follows any length; the relation model reads long videos at evenly spaced frames)."""
    from psg4d.baseline.predict import PipelinePredictor
    from psg4d.infer.video_predict import plan_video, predict_video, write_prediction_report
    from psg4d.utils.threads import AdaptiveThreads

    AdaptiveThreads(threads)()
    predictor = PipelinePredictor.from_pretrained(ckpt)
    predictor.config.relation.top_k = min(predictor.config.relation.top_k, candidates)
    if opts.depth is None and predictor.config.segmenter.use_depth:
        log.warning("no depth given: the pipeline's depth branch reads every pixel as unknown depth"
                    " (meta depth_source 'none')")
    # no streaming windows: "max_frames" is unbounded for the pipeline
    plan = plan_video(rgb, 2**62, predictor.config.segmenter.image_size, opts, info=info)
    res = predict_video(predictor, rgb, out, opts, plan=plan, video_id=video_id)
    if report:
        write_prediction_report(out, rgb, opts)
    log.info("%s: %d frames (pipeline), %d objects, %d ranked relations -> %s", res.video_id, res.num_frames,
             res.num_objects, res.num_relations, out)


def diagnose_command(
    ckpt: Path = typer.Option(..., "--ckpt", help="Checkpoint folder written by training."),
    data: Path = typer.Option(..., "--data", help="Dataset folder (any supported format)."),
    split: str = typer.Option("val", "--split", help="Split to draw the videos from."),
    limit: int = typer.Option(8, "--limit", help="Number of videos (the grounding table is limit x limit)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the numbers as JSON."),
) -> None:
    """Does the LLM read the video (grounding gap) and the order of its frames (reversal probe), and how
    good are masks from the ground-truth text?"""
    from dataclasses import asdict

    from psg4d.data.readers import open_dataset
    from psg4d.infer.diagnostics import format_reports, grounding, reversal_probe, teacher_forced_masks
    from psg4d.model.psg4d_llm import PSG4DModel
    from psg4d.utils.io import atomic_write_json

    if limit < 2:
        raise ConfigError(f"--limit must be at least 2 (got {limit}): the grounding table compares videos")
    model = PSG4DModel.from_pretrained(ckpt)
    reader = open_dataset(data)
    if split not in reader.splits:
        raise DataError(data, f"no split {split!r}; the dataset has {', '.join(reader.splits)}")
    samples = [reader.read(v) for v in reader.video_ids(split)[:limit]]
    if len(samples) < 2:
        raise DataError(data, f"split {split!r} has {len(samples)} video(s); the grounding table needs 2")
    g = grounding(model, samples)
    try:
        r, skipped = reversal_probe(model, samples), None
    except ValueError as e:  # the data's predicates have no declared time reversal
        r, skipped = None, str(e)
    m = teacher_forced_masks(model, samples)
    typer.echo(format_reports(g, m, r))
    if skipped:
        typer.echo(f"reversal probe skipped: {skipped}")
    if json_out is not None:
        atomic_write_json(json_out, {
            "grounding_gap": g.gap, "grounding_top1": g.top1, "logprob": g.logprob.tolist(),
            "tf_mask_hit": m.hit, "tf_mask_hit_per_category": m.per_category,
            "reversal": None if r is None else asdict(r), "reversal_skipped": skipped,
        }, indent=2)
