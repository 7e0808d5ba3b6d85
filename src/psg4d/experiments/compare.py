"""Experiment ``compare``: the PSG4DFormer pipeline baseline against the end-to-end 4D-LLM.

    psg4d experiment compare [--presets hoi gta] [--videos 100] [--quick] [--out runs/experiments/compare]

Per synthetic preset, on the same world, the same training videos, the same test videos and the
same evaluator:

* ``pipeline`` — RGB-D query segmenter -> tracker -> relation model (``configs/pipeline_hoi_tiny.yaml``);
* ``pipeline_no_depth`` — the same without the depth backbone (and without depth in the tubes' geometry);
* ``pipeline_no_temporal`` — ``pipeline``'s segmenter and tubes, the relation model without its
  temporal transformer (a per-frame MLP);
* ``4d_llm`` — the tiny 4D-LLM trained on the 4D videos alone (``4d_init``);
* ``4d_llm_transfer`` — with the 2D-to-4D transfer (HOI only: the GTA world has no 2D images).

The HOI world and both 4D-LLM arms are the transfer experiment's (:mod:`psg4d.experiments.transfer`,
its first 4D size): ``--hoi-run-dir runs/experiments/transfer`` reuses a finished ``psg4d experiment
transfer`` run, and trains what is missing otherwise.

Writes ``OUT/compare.json``: a list of records with ``method``, ``preset``, ``metrics``
{protocol: R/mR@K}, ``mean_tube_viou`` (test objects matched one-to-one by tube vIoU; unmatched
count 0), ``panoptic_quality`` (per-frame PQ), ``train_wall_s``, ``predict_s_per_video``; and
``compare.svg``. Nothing is tuned on the test split (it is only scored).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from psg4d.errors import ConfigError
from psg4d.experiments.common import (
    from_scratch_stage,
    llm_experiment,
    checkpoint_predictor,
    predict_and_score,
    synthetic_world,
    train_or_reuse,
)
from psg4d.experiments.output import check_output_folder, write_results
from psg4d.utils.io import atomic_write_json

log = logging.getLogger(__name__)

NAME = "compare"
PIPELINE_PRESET = "pipeline_hoi_tiny.yaml"
METHODS = ("pipeline", "pipeline_no_depth", "pipeline_no_temporal", "4d_llm", "4d_llm_transfer")
PRESETS = ("hoi", "gta")


@dataclass(kw_only=True)
class CompareExperimentConfig:
    out: Path = Path("runs/experiments/compare")  # the shipped results: --out bench/results
    run_dir: Path = Path("runs/experiments/compare")
    # the HOI world and its 4D-LLM runs (the transfer experiment's layout); None: RUN_DIR/hoi
    hoi_run_dir: Path | None = None
    presets: list[str] = field(default_factory=lambda: list(PRESETS))
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    videos: int = 100  # 4D training videos (the first N of the training split)
    images: int = 2000  # HOI 2D training images (the transfer arm)
    test_videos: int = 100
    frames: int = 16
    size: int = 64
    seed: int = 1
    segment_steps: int = 1500
    relation_steps: int = 1500
    llm_steps: int = 600  # 4d_llm on GTA (HOI: the transfer experiment's own 4d_init length)
    quick: bool = False

    def __post_init__(self) -> None:
        if self.quick:
            self.videos, self.images, self.test_videos, self.frames, self.size = 4, 12, 3, 6, 32
            # the segmenter needs some steps to separate objects at all (else no pairs to relate)
            self.segment_steps, self.relation_steps, self.llm_steps = 80, 2, 2
        bad = [p for p in self.presets if p not in PRESETS] + [m for m in self.methods if m not in METHODS]
        if bad or not self.presets or not self.methods:
            raise ConfigError(f"--presets from {list(PRESETS)} and --methods from {list(METHODS)}; got {bad or 'none'}")
        if "pipeline_no_temporal" in self.methods and "pipeline" not in self.methods:
            raise ConfigError("pipeline_no_temporal reuses the pipeline arm's tubes: add --methods pipeline")
        if min(self.videos, self.test_videos, self.segment_steps, self.relation_steps, self.llm_steps) < 1:
            raise ConfigError("--videos, --test-videos and the step counts must be positive")


# ------------------------------------------------------------------------ worlds and 4D-LLM arms
def _transfer_cfg(cfg: CompareExperimentConfig):
    from psg4d.experiments.transfer import TransferExperimentConfig

    tcfg = TransferExperimentConfig(run_dir=cfg.hoi_run_dir or cfg.run_dir / "hoi", sizes=[cfg.videos],
                                    images=cfg.images, test_videos=cfg.test_videos, frames=cfg.frames,
                                    size=cfg.size, seed=cfg.seed, quick=cfg.quick)
    if cfg.quick:
        tcfg.sizes = [cfg.videos]
    return tcfg


def _world(cfg: CompareExperimentConfig, preset: str) -> Path:
    if preset == "hoi":
        from psg4d.experiments.transfer import transfer_world

        return transfer_world(_transfer_cfg(cfg))
    return synthetic_world(cfg.run_dir / preset / "data", preset=preset, train_videos=cfg.videos,
                           test_videos=cfg.test_videos, frames=cfg.frames, size=cfg.size, seed=cfg.seed)


def _llm_arms(cfg: CompareExperimentConfig, preset: str, world: Path) -> dict[str, tuple[Path, float]]:
    """method -> (checkpoint, training wall seconds) of the 4D-LLM arms asked for."""
    wanted = [m for m in ("4d_llm", "4d_llm_transfer") if m in cfg.methods]
    if not wanted:
        return {}
    if preset == "hoi":  # the transfer experiment's run: its 4d_init stage is the arm without the transfer
        from psg4d.experiments.transfer import train_transfer

        run = train_transfer(_transfer_cfg(cfg), world, cfg.videos)
        arms = {"4d_llm": (run.stage_dirs["4d_init"], run.stage_wall_s["4d_init"]),
                "4d_llm_transfer": (run.final_dir, run.wall_s)}
        return {m: arms[m] for m in wanted}
    out = cfg.run_dir / preset / "4d_llm"
    run = train_or_reuse(llm_experiment(world, stages=[from_scratch_stage(cfg.llm_steps)], out_dir=out,
                                        seed=cfg.seed, train_videos=cfg.videos, where=f"{NAME} experiment"), out)
    return {"4d_llm": (run.final_dir, run.wall_s)} if "4d_llm" in wanted else {}


# ------------------------------------------------------------------------ pipeline arms
def _pipeline_arms(cfg: CompareExperimentConfig, preset: str, world: Path) -> dict[str, tuple[Path, float]]:
    from psg4d.baseline.config import load_pipeline_config
    from psg4d.baseline.pipeline import train_pipeline
    from psg4d.train.stages import PRESET_DIR

    base = cfg.run_dir / preset
    common = [f"data.root={world.resolve()}", f"data.max_videos={cfg.videos}",
              f"segment_train.steps={cfg.segment_steps}", f"relation_train.steps={cfg.relation_steps}",
              f"segmenter.image_size={cfg.size}", f"seed={cfg.seed}"]
    if cfg.quick:
        common += ["segment_train.batch_size=4", "segment_train.lr=3e-3", "segment_train.warmup_steps=10",
                   "relation_train.batch_size=2", "segmenter.widths=[8, 16, 16]", "segmenter.hidden=16",
                   "segmenter.ffn=32", "segmenter.num_queries=8", "relation.hidden=16"]
    variants = {
        "pipeline": [],
        "pipeline_no_depth": ["segmenter.use_depth=false"],
        "pipeline_no_temporal": [f"reuse={(base / 'pipeline').resolve()}", "relation.use_temporal=false"],
    }
    arms: dict[str, tuple[Path, float]] = {}
    for method in [m for m in variants if m in cfg.methods]:
        out = base / method
        pcfg = load_pipeline_config(PRESET_DIR / PIPELINE_PRESET, common + variants[method] + [f"output_dir={out}"])
        result = train_pipeline(pcfg, out_dir=out)
        if result.final_dir is None:
            raise ConfigError(f"{out}: the pipeline did not finish")
        walls = json.loads((result.final_dir / "trainer.json").read_text())["wall_s"]
        track = json.loads(((pcfg.reuse or out) / "stages.json").read_text())
        track_s = sum(float(s["wall_s"]) for s in track if s["name"] == "track" and not s["skipped"])
        arms[method] = (result.final_dir, float(walls["segment"]) + float(walls["relation"]) + track_s)
    return arms


# ------------------------------------------------------------------------ scoring
def _score(ckpt: Path, world: Path, cfg: CompareExperimentConfig, preset: str, method: str) -> dict[str, Any]:
    from psg4d.data.schema import save_scene_graphs
    from psg4d.eval.segmentation import SegmentationQuality

    predictor = checkpoint_predictor(ckpt, quick=cfg.quick)
    # every GT object, and only those in a GT relation: the 4D-LLM writes (and so segments) only the
    # objects of its triplets, the pipeline every segment it finds
    seg, seg_related = SegmentationQuality(), SegmentationQuality()

    def segments(pred, gt) -> None:
        seg.update(pred, gt)
        related = {i for r in gt.relations for i in (r.subject_id, r.object_id)}
        seg_related.update(pred, replace(gt, objects=[o for o in gt.objects if o.object_id in related]))

    scored = predict_and_score(predictor, world / "4d", limit=cfg.test_videos, each=segments)
    preds = scored.predictions
    quality = seg.compute()
    tq, pqr = quality["tube"], quality["panoptic"]
    tq_related = seg_related.compute()["tube"]
    # kept beside the runs: `psg4d eval --pred` scores them again, `psg4d viz` shows them
    (cfg.run_dir / "predictions").mkdir(parents=True, exist_ok=True)
    save_scene_graphs(cfg.run_dir / "predictions" / f"{preset}_{method}.jsonl", preds)
    return {"metrics": scored.metrics,
            "mean_tube_viou": None if tq["mean_tube_viou"] is None else round(float(tq["mean_tube_viou"]), 4),
            "tube_recall@0.5": tq.get("recall@0.5"), "tube_class_recall@0.5": tq.get("class_recall@0.5"),
            "mean_tube_viou_related_objects": None if tq_related["mean_tube_viou"] is None
            else round(float(tq_related["mean_tube_viou"]), 4),
            "panoptic_quality": {k: (None if pqr.get(k) is None else round(float(pqr[k]), 2))
                                 for k in ("PQ", "SQ", "RQ", "PQ_things", "PQ_stuff")},
            "predict_s_per_video": round(scored.predict_s_per_video, 3), "test_videos": len(preds),
            "objects_per_video": round(sum(len(p.objects) for p in preds) / max(len(preds), 1), 2)}


# ------------------------------------------------------------------------ driver
def run(cfg: CompareExperimentConfig) -> list[dict[str, Any]]:
    out = check_output_folder(cfg.out, name=NAME, quick=cfg.quick)
    records: list[dict[str, Any]] = []
    for preset in cfg.presets:
        world = _world(cfg, preset)
        arms = {**_pipeline_arms(cfg, preset, world), **_llm_arms(cfg, preset, world)}
        for method in [m for m in METHODS if m in arms]:
            ckpt, wall = arms[method]
            scored = _score(ckpt, world, cfg, preset, method)
            records.append({"method": method, "preset": preset, **scored, "train_wall_s": round(wall, 1),
                            "train_videos": cfg.videos, "checkpoint": str(ckpt)})
            log.info("%s %s: pvsg R@50 %.2f, volumetric R@50 %.2f, mean tube vIoU %s, PQ %s, train %.0f s, "
                     "%.3f s/video", preset, method, scored["metrics"]["pvsg"].get("R@50", float("nan")),
                     scored["metrics"]["volumetric"].get("R@50", float("nan")), scored["mean_tube_viou"],
                     scored["panoptic_quality"]["PQ"], wall, scored["predict_s_per_video"])
            atomic_write_json(out / f"{NAME}.json", records, indent=1)  # a long run keeps what it has
    write_results(out, NAME, records, cfg, _plot)
    return records


def _plot(path: Path, records: list[dict[str, Any]]) -> None:
    from psg4d.viz.plots import write_bar_chart

    labels = [f"{r['preset']} {r['method']}" for r in records]
    series = {"pvsg R@50": [r["metrics"]["pvsg"].get("R@50") or 0.0 for r in records],
              "volumetric R@50": [r["metrics"]["volumetric"].get("R@50") or 0.0 for r in records],
              "mean tube vIoU x100": [100.0 * (r["mean_tube_viou"] or 0.0) for r in records]}
    write_bar_chart(path, labels, series, title="pipeline baseline vs 4D-LLM (same data, same evaluator)", unit="%")
