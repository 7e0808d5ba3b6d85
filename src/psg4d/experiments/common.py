"""What the experiments share: their synthetic worlds, their 4D-LLM training runs, and predicting
videos and scoring them under both protocols.

Public, so an experiment builds on these (or on another experiment's public functions, such as
:func:`psg4d.experiments.transfer.train_transfer`), never on another experiment's private ones.

* the fair protocol (BENCHMARKS.md) — :data:`DESIGN_WORLDS` (never judged on),
  :func:`refuse_design_world`, :func:`mean_std` (over training seeds);
* worlds — :func:`synthetic_world`: the world whose splits hold the videos and images an experiment
  needs, synthesised once and then reused; the split arithmetic is
  :func:`psg4d.data.synth.items_for_splits` (the inverse of the synthesiser's own split, with its
  fractions);
* training — :func:`psg4d.train.stages.preset_experiment` (a shipped preset, every stage a given length),
  :func:`llm_experiment` (a preset on a world's first N training videos with the stages given,
  nothing validated on the way), :func:`train_or_reuse` (train, or reuse the stages a run already
  finished: a :class:`TrainedRun` with each stage's final checkpoint and training seconds);
* scoring — :func:`predict_videos` (a predictor over a split's first N videos, timed),
  :func:`protocol_metrics` (R@K and mR@K under both protocols), both in one:
  :func:`predict_and_score`; :func:`held_out_graphs` keeps the relations of some categories.

Heavy modules (torch, the model, the evaluator) are imported where they are used.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from psg4d.errors import ConfigError

if TYPE_CHECKING:
    from psg4d.data.synth.reuse import Reuse
    from psg4d.data.schema import SceneGraph4D
    from psg4d.families import VideoPredictor
    from psg4d.train.stages import ExperimentConfig

#: generation limit of a ``--quick`` run's 4D-LLM (an undertrained model writes until its limit)
QUICK_MAX_NEW_TOKENS = 48
#: the preset of the tiny 4D-LLM the experiments train (``psg4d demo --model tiny``)
TINY_PRESET = "hoi_tiny.yaml"
#: what the tiny model's ``4d_init`` stage trains: everything, from scratch
FROM_SCRATCH = ("encoder", "projector", "llm", "obj_proj", "mask_decoder")
# seeds of the worlds that designed psg4d's recipes (BENCHMARKS.md, fair protocol): never judged on
DESIGN_WORLDS = (0, 1, 11)


def refuse_design_world(world_seed: int, *, quick: bool = False) -> None:
    """Judged numbers come from a world never used for design (``--quick`` toy runs may use any)."""
    if world_seed in DESIGN_WORLDS and not quick:
        raise ConfigError(f"--world-seed {world_seed} designed the recipes (seeds {DESIGN_WORLDS}); "
                          "judged numbers need a world never used for design")


def mean_std(values: Iterable[float | None]) -> dict[str, float | None]:
    """``{"mean", "std"}`` over the runs (sample std, 0 for one run); runs with no value are left out."""
    a = np.array([v for v in values if v is not None], dtype=float)
    if a.size == 0:
        return {"mean": None, "std": None}
    return {"mean": round(float(a.mean()), 4), "std": round(float(a.std(ddof=1)) if a.size > 1 else 0.0, 4)}


# ----------------------------------------------------------------------------- worlds


def synthetic_world(
    data_dir: Path, *, preset: str = "hoi", train_videos: int = 0, val_videos: int = 0, test_videos: int = 0,
    train_images: int = 0, frames: int, size: int, seed: int, novel: Sequence[str] = (),
    stamp: Path | None = None, reuse: Reuse = "same_settings",
) -> Path:
    """The synthetic world in ``data_dir`` whose 4D train / val / test splits hold at least
    ``train_videos`` / ``val_videos`` / ``test_videos`` videos and whose 2D training split at least
    ``train_images`` images (none asked: no 2D images), ``frames`` frames of ``size`` pixels, world
    seed ``seed``, ``novel`` categories only in 4D test videos.

    How many videos and images that takes is :func:`~psg4d.data.synth.items_for_splits` with the
    synthesiser's split fractions; the world is synthesised, or reused while its settings match
    (:func:`~psg4d.data.synth.generate_or_reuse`: ``stamp`` and ``reuse`` as there). Returns ``data_dir``.
    """
    from psg4d.data.synth import SynthConfig, generate_or_reuse, items_for_splits

    config = SynthConfig(
        preset=preset, videos=items_for_splits(train_videos, val_videos, test_videos),
        images=items_for_splits(train_images), frames=frames, size=size, seed=seed, novel=tuple(novel),
    )
    return generate_or_reuse(config, data_dir, stamp=stamp, reuse=reuse)


# ----------------------------------------------------------------------------- training


@dataclass(frozen=True, kw_only=True)
class TrainedRun:
    """A finished 4D-LLM training run (:func:`train_or_reuse`)."""

    final_dir: Path  # the last stage's final checkpoint
    stage_dirs: dict[str, Path]  # stage name -> its final checkpoint
    # stage name -> its training seconds (a reused stage: those of the run that trained it)
    stage_wall_s: dict[str, float]

    @property
    def wall_s(self) -> float:
        """Training seconds of every stage together."""
        return sum(self.stage_wall_s.values())


def train_or_reuse(exp: ExperimentConfig, out_dir: Path) -> TrainedRun:
    """Train ``exp`` into ``out_dir``, resuming (a finished stage is reused, not trained again)."""
    from psg4d.train.loop import train

    result = train(exp, out_dir=out_dir, resume=True)
    return TrainedRun(final_dir=result.final_dir, stage_dirs={st.name: st.final_dir for st in result.stages},
                      stage_wall_s={st.name: st.wall_s for st in result.stages})


def from_scratch_stage(max_steps: int) -> dict[str, Any]:
    """The tiny model's ``4d_init`` stage, every part trained from scratch, ``max_steps`` long."""
    return {"name": "4d_init", "kind": "4d_init", "max_steps": max_steps, "trainable": list(FROM_SCRATCH)}


def llm_experiment(
    world: Path, *, stages: list[dict[str, Any]], out_dir: Path, seed: int, train_videos: int,
    preset: str = TINY_PRESET, where: str = "experiment",
) -> ExperimentConfig:
    """``preset`` trained through ``stages`` (stage dicts as in a preset's ``stages:``) on the first
    ``train_videos`` videos of the 4D training split of ``world``; no validation (every setting is
    fixed in advance), no intermediate checkpoints. ``where`` names the experiment in errors."""
    from psg4d.config import load_yaml
    from psg4d.train.stages import PRESET_DIR
    from psg4d.train.stages import experiment_from_data

    data = load_yaml(PRESET_DIR / preset)
    data["data"] = {
        "root": str(Path(world).resolve()),
        "train": [{"path": "4d", "split": "train", "max_videos": train_videos}],
        "val": [],  # nothing is tuned on the way
    }
    data["train"] = dict(data.get("train") or {}, val_every=0, save_every=0, progress=False, log_every=50)
    data["stages"] = stages
    data["output_dir"] = str(out_dir)
    data["seed"] = seed
    return experiment_from_data(data, where=where)


# ----------------------------------------------------------------------------- scoring


@dataclass(kw_only=True)
class PredictedVideos:
    """What :func:`predict_videos` predicted, in the order of the split."""

    predictions: list[SceneGraph4D]
    truths: list[SceneGraph4D]
    predict_s_per_video: float  # mean seconds of ``predictor.predict`` (reading the video not counted)


@dataclass(kw_only=True)
class ScoredVideos(PredictedVideos):
    """:class:`PredictedVideos` with their :func:`protocol_metrics`."""

    metrics: dict[str, dict[str, float]]


def checkpoint_predictor(ckpt: Path, *, quick: bool = False) -> "VideoPredictor":
    """The predictor of checkpoint ``ckpt``, of any model family (:mod:`psg4d.families`), with
    default settings (a ``quick`` run's generated text stops at :data:`QUICK_MAX_NEW_TOKENS`)."""
    from psg4d.families import PredictOptions, family_of_checkpoint

    options = PredictOptions(max_new_tokens=QUICK_MAX_NEW_TOKENS if quick else None)
    return family_of_checkpoint(ckpt).load_predictor(ckpt, options)


def predict_videos(
    predictor: Any, data_4d: Path, *, split: str = "test", limit: int | None = None, without_depth: bool = False,
    each: Callable[[SceneGraph4D, SceneGraph4D], None] | None = None,
) -> PredictedVideos:
    """Predict the first ``limit`` videos (None: all) of ``split`` of the 4D dataset ``data_4d``
    with ``predictor`` (anything with ``predict(video) -> SceneGraph4D``), each with its ground
    truth; ``without_depth``: the videos' depth withheld (RGB alone); ``each(prediction, truth)``
    is called after every video."""
    from psg4d.data.readers import open_dataset

    reader = open_dataset(data_4d)
    ids = reader.video_ids(split)[:limit]
    predictions, truths = [], []
    seconds = 0.0
    for vid in ids:
        video, truth = reader.read_video(vid), reader.read_graph(vid)
        if without_depth:
            video = replace(video, depth=None)
        t0 = time.perf_counter()
        pred = predictor.predict(video)
        seconds += time.perf_counter() - t0
        if each is not None:
            each(pred, truth)
        predictions.append(pred)
        truths.append(truth)
    return PredictedVideos(predictions=predictions, truths=truths, predict_s_per_video=seconds / max(len(ids), 1))


def protocol_metrics(
    predictions: Iterable[SceneGraph4D], truths: Iterable[SceneGraph4D] | Mapping[str, SceneGraph4D], *,
    label_map: Any = None, graph_constraint: bool = False,
) -> dict[str, dict[str, float]]:
    """R@K and mR@K (K = 20, 50, 100; percent, 2 decimals) of ``predictions`` against ``truths``
    under both protocols (pvsg, volumetric): ``{protocol: {"R@20": ..., "mR@20": ..., ...}}``. ``label_map``
    (:class:`~psg4d.eval.labelmap.LabelMap`) maps predicted names first; ``graph_constraint`` adds the
    graph-constrained recalls, keyed ``"R@K (gc)"``."""
    from psg4d.eval.metric import PROTOCOLS, evaluate

    predictions = list(predictions)
    by_id = truths if isinstance(truths, Mapping) else {g.video_id: g for g in truths}
    options = {} if label_map is None else {"label_map": label_map}
    metrics: dict[str, dict[str, float]] = {}
    for protocol in PROTOCOLS:
        r = evaluate(predictions, by_id, protocol=protocol, **options)
        metrics[protocol] = _recalls(r)
        if graph_constraint:
            metrics[protocol].update({f"{k} (gc)": v for k, v in _recalls(r["graph_constraint"]).items()})
    return metrics


def _recalls(result: Mapping[str, Any]) -> dict[str, float]:
    return {k: round(float(v), 2) for k, v in result.items()
            if isinstance(v, (int, float)) and k.startswith(("R@", "mR@"))}


def predict_and_score(
    predictor: Any, data_4d: Path, *, split: str = "test", limit: int | None = None, without_depth: bool = False,
    each: Callable[[SceneGraph4D, SceneGraph4D], None] | None = None,
) -> ScoredVideos:
    """:func:`predict_videos` (the same arguments), then :func:`protocol_metrics` of what it predicted."""
    done = predict_videos(predictor, data_4d, split=split, limit=limit, without_depth=without_depth, each=each)
    return ScoredVideos(predictions=done.predictions, truths=done.truths,
                        predict_s_per_video=done.predict_s_per_video,
                        metrics=protocol_metrics(done.predictions, done.truths))


def held_out_graphs(gts: Iterable[SceneGraph4D], novel: set[str]) -> list[SceneGraph4D]:
    """Copies of ``gts`` keeping only the relations whose subject or object category is in ``novel``."""
    out = []
    for g in gts:
        cats = {o.object_id: o.category for o in g.objects}
        keep = [r for r in g.relations if cats.get(r.subject_id) in novel or cats.get(r.object_id) in novel]
        out.append(replace(g, relations=keep))
    return out
