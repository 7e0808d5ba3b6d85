"""``psg4d predict DIR_OF_VIDEOS``: every video of a folder, sharded, resumable, past bad videos.

* **Sharding.** Under ``torchrun`` (``WORLD_SIZE`` > 1, one node or many) rank
  ``r`` of ``W`` takes videos ``r, r + W, ...`` of the sorted list: no process
  group is needed, each rank writes its own files into the shared ``--out``.
  Otherwise ``workers`` local processes (spawned, each loading the checkpoint
  once) share the videos, each with ``cpus // workers`` torch threads.
* **Resuming.** A video whose ``OUT/<name>.json`` exists is skipped: outputs are
  written atomically, so a file that exists is complete.
* **Bad videos.** A video that cannot be read or predicted is logged and the
  others go on; :class:`BatchResult` lists them, and the command then fails
  with one line naming each (under torchrun, where a failing rank would make
  torchrun stop all the others, the rank lists them in
  ``OUT/failed.rank<R>.txt``, logs an error and exits 0).
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

from tqdm import tqdm

from psg4d.errors import Psg4dError
from psg4d.families import PredictOptions, VideoPredictor, family_of_checkpoint
from psg4d.infer.video_predict import ReadOptions, finished, predict_video, write_prediction_report

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class BatchResult:
    done: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)  # (video, one-line reason)


def dist_rank() -> tuple[int, int]:
    """(rank, world size) from the torchrun environment; (0, 1) outside it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if not 0 <= rank < max(world, 1):
        raise Psg4dError(f"RANK={rank} is outside WORLD_SIZE={world}")
    return rank, max(world, 1)


def shard(videos: list[Path], rank: int, world: int) -> list[Path]:
    return videos[rank::world]


def output_of(video: Path, out_dir: Path) -> Path:
    return out_dir / f"{video.stem}.json"


# one model per worker process, loaded once by the pool initializer
_WORKER: dict = {}


def _load(ckpt: str | Path, options: PredictOptions) -> VideoPredictor:
    return family_of_checkpoint(ckpt).load_predictor(ckpt, options)


def _init_worker(ckpt: str, options: PredictOptions, opts: ReadOptions, report: bool) -> None:
    logging.basicConfig(level=logging.WARNING)
    _WORKER.update(predictor=_load(ckpt, options), opts=opts, report=report)


def _predict_one(predictor: VideoPredictor, video: Path, out: Path, opts: ReadOptions, report: bool,
                 progress: bool) -> str | None:
    """None on success, else the one-line reason (the batch goes on)."""
    try:
        predict_video(predictor, video, out, opts, progress=progress)
        if report:
            write_prediction_report(out, video, opts)
    except Psg4dError as e:
        return str(e)
    except Exception as e:  # a decoder or library failure on one file must not stop the batch
        log.debug("%s failed", video, exc_info=True)
        return f"{video}: {type(e).__name__}: {e}"
    return None


def _worker_task(video: str, out: str) -> tuple[str, str | None]:
    return video, _predict_one(_WORKER["predictor"], Path(video), Path(out), _WORKER["opts"], _WORKER["report"],
                               progress=False)


def run_batch(
    videos: list[Path], out_dir: Path, *, ckpt: Path, predictor: VideoPredictor | None,
    options: PredictOptions, opts: ReadOptions, report: bool = False, workers: int = 1,
) -> BatchResult:
    """Predict this rank's share of ``videos`` into ``out_dir`` with checkpoint ``ckpt`` of any model
    family (``predictor``: already loaded from it, used when one process predicts); see the module doc."""
    rank, world = dist_rank()
    mine = shard(videos, rank, world)
    result = BatchResult()
    todo = []
    for v in mine:
        (result.skipped if finished(output_of(v, out_dir)) else todo).append(v)
    if result.skipped:
        log.info("skipping %d finished video(s) (delete their JSON to predict them again)", len(result.skipped))
    if world > 1:
        log.info("rank %d of %d: %d of %d videos", rank, world, len(mine), len(videos))
    # under torchrun the ranks are the workers: one process each, started by torchrun
    workers = 1 if world > 1 else max(1, min(workers, len(todo)))
    for video, err in tqdm(_run(todo, out_dir, ckpt=ckpt, predictor=predictor, options=options, opts=opts,
                                report=report, workers=workers),
                           total=len(todo), desc="predict", unit="video", disable=not todo):
        if err is None:
            result.done.append(video)
        else:
            log.error("%s", err)
            result.failed.append((video, err))
    return result


def _run(todo: list[Path], out_dir: Path, *, ckpt: Path, predictor: VideoPredictor | None,
         options: PredictOptions, opts: ReadOptions, report: bool, workers: int) -> Iterator[tuple[Path, str | None]]:
    if workers == 1:
        predictor = predictor if predictor is not None else _load(ckpt, options)
        for v in todo:
            yield v, _predict_one(predictor, v, output_of(v, out_dir), opts, report, progress=False)
        return
    import multiprocessing

    from psg4d.utils.threads import available_cpus

    # threads split between the workers, unless fixed: N workers x all CPUs would oversubscribe
    threads = options.threads or max(1, available_cpus() // workers)
    wopts = replace(options, threads=threads)
    # spawn, not fork: torch's thread pools do not survive a fork
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_worker, initargs=(str(ckpt), wopts, opts, report)) as pool:
        futures = [pool.submit(_worker_task, str(v), str(output_of(v, out_dir))) for v in todo]
        for fut in as_completed(futures):
            video, err = fut.result()
            yield Path(video), err
