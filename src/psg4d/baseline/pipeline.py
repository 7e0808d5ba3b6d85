"""Training the pipeline baseline, stage by stage, each stage's output on disk.

``OUT/segment/`` the segmenter (``last``: resumable, ``final``: done); ``OUT/track/<split>/<video>.npz``
the tubes the trained segmenter and the tracker make of each video (written one by one, so an
interrupted run continues where it stopped); ``OUT/relation/`` the relation model trained on the
cached training tubes; ``OUT/final/`` the whole pipeline as one checkpoint (``config.json`` with
``kind: pipeline`` + ``model.safetensors``) that ``psg4d eval --ckpt`` and ``psg4d predict`` load.

``PipelineConfig.reuse`` names an earlier pipeline run whose ``segment`` and ``track`` stages this one
takes as they are (the relation ablation shares the segmenter and its tubes).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from psg4d.baseline.checkpoint import load_modules, module_writer, save_modules
from psg4d.baseline.config import PIPELINE_STAGES, PipelineConfig, StageTrainConfig, train_ids, with_data_vocab
from psg4d.baseline.predict import PipelinePredictor
from psg4d.baseline.relation import RelationModel, training_pairs
from psg4d.baseline.seg_loss import SegmentationLoss
from psg4d.baseline.segmenter import QuerySegmenter, frame_targets
from psg4d.baseline.targets import match_tubes_to_gold, relation_targets
from psg4d.baseline.tracker import Tracker
from psg4d.baseline.types import TrackedTubes
from psg4d.config import from_dict, to_dict
from psg4d.data.readers import open_dataset
from psg4d.engine import checkpoint as ckpt
from psg4d.engine import distributed as dist_utils
from psg4d.engine import stage_dir as stages_on_disk
from psg4d.engine.distributed import DistInfo
from psg4d.engine.fit import Fit, LoopSettings, Start
from psg4d.engine.metrics import METRICS_FILE, MetricsLog
from psg4d.engine.optim import make_optimizer, make_scheduler
from psg4d.engine.run_folder import check_run_folder, flatten
from psg4d.engine.runtime import seed_everything
from psg4d.errors import ConfigError
from psg4d.families import PIPELINE_KIND, header
from psg4d.utils.io import atomic_path, atomic_write_json, start_over

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------ shared training bits
@dataclass
class StageReport:
    name: str
    steps: int = 0
    wall_s: float = 0.0
    final_loss: float | None = None
    skipped: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class PipelineResult:
    stages: list[StageReport]
    final_dir: Path | None


# What a stage's step function gets: the module (wrapped as the engine runs it) and the stage's
# sampling generator; it returns the batch's losses ({"loss": ..., parts...}).
StepFn = Callable[[nn.Module, np.random.Generator], dict[str, torch.Tensor]]


def _fit(name: str, module: nn.Module, t: StageTrainConfig, stage_dir: Path, config: dict[str, Any],
         step_fn: StepFn, *, cfg: PipelineConfig, info: DistInfo, resume: bool) -> StageReport:
    """One trained stage on the engine: AdamW with warm-up then cosine to a tenth of the rate;
    ``stage_dir/last`` every ``save_every`` steps (model, optimizer, schedule, RNGs, the sampling
    generator); ``stage_dir/final`` at the end. Under torchrun every rank draws its own batches and
    the engine averages the gradients; only rank 0 writes."""
    opt = make_optimizer("adamw", [{"params": [p for p in module.parameters() if p.requires_grad]}], lr=t.lr,
                         weight_decay=t.weight_decay)
    sched = make_scheduler(opt, shape="cosine", warmup_steps=t.warmup_steps, min_lr_ratio=0.1, total_steps=t.steps)
    rng = np.random.default_rng(cfg.seed + info.rank)
    torch.manual_seed(cfg.seed + info.rank)
    write = module_writer(config, name)
    start = Start()
    last = ckpt.find_last(stage_dir) if resume else None
    if last is not None:
        load_modules(last, {name: module})
        state = stages_on_disk.restore_resumable(last, wrapped=module, optimizer=opt, scheduler=sched, info=info)
        rng.bit_generator.state = json.loads(state["extra"]["numpy_rng"])
        start = Start(step=int(state["step"]), elapsed_s=float(state["data"].get("elapsed_s", 0.0)),
                      resumed_from=int(state["step"]))
        log.info("stage %s: resuming from %s at step %d", name, last, start.step)
    dist_utils.barrier(info)
    if info.is_main:
        stage_dir.mkdir(parents=True, exist_ok=True)
    metrics = MetricsLog(stage_dir / METRICS_FILE, enabled=info.is_main)
    kept = metrics.reset(start.resumed_from)
    start.last_loss = next((r["loss"] for r in reversed(kept) if "loss" in r), None)
    settings = LoopSettings(total=t.steps, max_grad_norm=t.max_grad_norm, log_every=t.log_every,
                            save_every=t.save_every, num_threads=cfg.num_threads,
                            adapt_threads_every=cfg.adapt_threads_every)

    def save(step: int, elapsed: float) -> None:
        stages_on_disk.save_resumable(
            stage_dir, name=name, wrapped=module, write_model=write, optimizer=opt, scheduler=sched, step=step,
            info=info, keep_last=2, data_position={"elapsed_s": elapsed, "world_size": info.world_size},
            extra={"numpy_rng": json.dumps(rng.bit_generator.state)}, meta={"stage": name},
        )

    module.train()
    fit = Fit(name=name, wrapped=module, optimizer=opt, scheduler=sched, info=info, settings=settings, metrics=metrics)
    done = fit.run(start, lambda: step_fn(module, rng), save=save)
    module.eval()
    stages_on_disk.save_final(stage_dir, wrapped=module, write_model=write, step=done.step, info=info,
                              meta={"stage": name, "final_loss": done.last_loss, "wall_s": round(done.wall_s, 1)})
    return StageReport(name=name, steps=done.step, wall_s=done.wall_s, final_loss=done.last_loss)


# ------------------------------------------------------------------------ stage 1: segmentation
def _segment_stage(cfg: PipelineConfig, out: Path, *, info: DistInfo, resume: bool) -> StageReport:
    stage_dir = out / "segment"
    if (done := stages_on_disk.finished(stage_dir, 0)) is not None:
        return StageReport(name="segment", steps=int(done["step"]), wall_s=float(done["wall_s"]), skipped=True)
    seg_cfg = cfg.segmenter
    seed_everything(cfg.seed)  # the same initial weights on every rank and in every run
    model = QuerySegmenter(config=seg_cfg)
    criterion = SegmentationLoss(config=seg_cfg)
    reader = open_dataset(cfg.data.root / cfg.data.path)
    index = {c: i for i, c in enumerate(seg_cfg.class_names)}
    rgbs, depths, targets = [], [], []  # per video: [T, 3, S, S], [T, 1, S, S] | None, [T] dicts
    ids = train_ids(reader, cfg)
    for vid in tqdm(ids, desc="segment: reading frames", unit="video", leave=False):
        video, graph = reader.read_video(vid), reader.read_graph(vid)
        rgb, depth = model.preprocess(video)
        rgbs.append(rgb)
        depths.append(depth if seg_cfg.use_depth else None)
        targets.append([frame_targets(graph, t, index, seg_cfg.image_size) for t in range(video.num_frames)])
    frames = [(v, t) for v in range(len(rgbs)) for t in range(rgbs[v].shape[0])]
    if not frames:
        raise ConfigError(f"{cfg.data.root / cfg.data.path}: split {cfg.data.train_split!r} has no frames")
    log.info("segment: %d frames of %d videos, %d classes, %d parameters", len(frames), len(rgbs),
             len(seg_cfg.class_names), sum(p.numel() for p in model.parameters()))
    size = seg_cfg.image_size

    def step_fn(module: nn.Module, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        pick = [frames[i] for i in rng.choice(len(frames), size=min(cfg.segment_train.batch_size, len(frames)),
                                               replace=False)]
        flip = rng.random(len(pick)) < 0.5  # horizontal flips: a segment's class does not depend on side
        rgb = torch.stack([rgbs[v][t].flip(-1) if f else rgbs[v][t] for (v, t), f in zip(pick, flip)])
        depth = None
        if seg_cfg.use_depth:
            depth = torch.stack([(depths[v][t] if depths[v] is not None else torch.zeros(1, size, size))
                                 for v, t in pick])
            depth = torch.where(torch.from_numpy(flip)[:, None, None, None], depth.flip(-1), depth)
        tg = [{"labels": targets[v][t]["labels"], "masks": targets[v][t]["masks"].flip(-1) if f
               else targets[v][t]["masks"]} for (v, t), f in zip(pick, flip)]
        return criterion(module(rgb, depth), tg)

    config = {"kind": "segmenter", "segmenter": to_dict(seg_cfg)}
    report = _fit("segmenter", model, cfg.segment_train, stage_dir, config, step_fn, cfg=cfg, info=info,
                  resume=resume)
    return replace(report, name="segment")


# ------------------------------------------------------------------------ stage 2: tubes
def _track_stage(cfg: PipelineConfig, out: Path) -> StageReport:
    stage_dir = out / "track"
    if not (out / "segment" / "final").is_dir():
        raise ConfigError(f"{out / 'segment'}: the segmenter is not trained yet; run the segment stage first "
                          "(--stage segment)")
    seg = QuerySegmenter(config=cfg.segmenter)
    load_modules(out / "segment" / "final", {"segmenter": seg})
    predictor = PipelinePredictor(config=cfg, segmenter=seg, tracker=Tracker(config=cfg.tracker), relation=None)
    reader = open_dataset(cfg.data.root / cfg.data.path)
    t0, written, counts = time.perf_counter(), 0, []
    for split in cfg.data.cache_splits:
        folder = stage_dir / split
        folder.mkdir(parents=True, exist_ok=True)
        ids = train_ids(reader, cfg) if split == cfg.data.train_split else reader.video_ids(split)
        for vid in tqdm(ids, desc=f"track: {split}", unit="video", leave=False):
            path = folder / f"{_safe(vid)}.npz"
            if path.is_file():
                continue
            tubes = predictor.tubes(reader.read_video(vid))
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as f:
                    tubes.save(f)
            written += 1
            counts.append(len(tubes))
    wall = time.perf_counter() - t0
    if written:
        log.info("track: %d videos, %.1f tubes per video, %.2f s per video", written, float(np.mean(counts)),
                 wall / written)
    return StageReport(name="track", steps=written, wall_s=wall, skipped=written == 0)


def _safe(video_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in video_id)


def cached_tubes(out: Path, split: str, video_id: str) -> TrackedTubes:
    return TrackedTubes.load(out / "track" / split / f"{_safe(video_id)}.npz")


# ------------------------------------------------------------------------ stage 3: relations
def _relation_stage(cfg: PipelineConfig, out: Path, tubes_from: Path, *, info: DistInfo,
                    resume: bool) -> StageReport:
    stage_dir = out / "relation"
    if (done := stages_on_disk.finished(stage_dir, 0)) is not None:
        return StageReport(name="relation", steps=int(done["step"]), wall_s=float(done["wall_s"]), skipped=True)
    rel_cfg = cfg.relation
    seed_everything(cfg.seed + 1000)
    model = RelationModel(config=rel_cfg)
    reader = open_dataset(cfg.data.root / cfg.data.path)
    ids = train_ids(reader, cfg)
    missing = [v for v in ids if not (tubes_from / "track" / cfg.data.train_split / f"{_safe(v)}.npz").is_file()]
    if missing:
        raise ConfigError(f"{tubes_from / 'track' / cfg.data.train_split}: no tubes of {len(missing)} training videos "
                          f"(e.g. {missing[0]}); run the track stage first (--stage track)")
    items, matched, gold_objects, gold_rel, kept_rel = [], 0, 0, 0, 0
    for vid in tqdm(ids, desc="relation: targets", unit="video", leave=False):
        tubes, gold = cached_tubes(tubes_from, cfg.data.train_split, vid), reader.read_graph(vid)
        match = match_tubes_to_gold(tubes, gold, cfg.segmenter.class_names, match_iou=rel_cfg.match_iou,
                                    min_matched_frames=rel_cfg.min_matched_frames)
        tg = relation_targets(match, gold, rel_cfg.predicate_names)
        matched += int((match.gold_ids >= 0).sum())
        gold_objects += len(gold.objects)
        gold_rel += len(gold.relations)
        kept_rel += int(tg.predicates.sum())
        if len(tubes) >= 2:
            items.append((_tensors(tubes), tg))
    if not items:  # nothing to learn from: kept as initialised, and said loudly
        log.warning("relation: no training video has two tubes (%s); the segmenter has not learned to separate "
                    "objects, so the relation model stays untrained", tubes_from / "track")
        if info.is_main:
            save_modules(stage_dir / "final", {"relation": model}, {"kind": "relation", "relation": to_dict(rel_cfg)},
                         meta={"step": 0, "wall_s": 0.0, "untrained": True})
        dist_utils.barrier(info)
        return StageReport(name="relation", extra={"untrained": True})
    log.info("relation: %d videos; %d of %d gold objects matched by a tube, %d of %d gold relations "
             "(predicate x pair) reachable", len(items), matched, gold_objects, kept_rel, gold_rel)

    def step_fn(module: nn.Module, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        pick = rng.choice(len(items), size=min(cfg.relation_train.batch_size, len(items)), replace=False)
        total: dict[str, torch.Tensor] = {}
        for i in pick:
            x, tg = items[i]
            pairs = training_pairs(tg, None, rel_cfg.max_pairs, rng)
            loss = model.loss(module(*x, pairs=pairs), tg)
            for k, v in loss.items():
                total[k] = total.get(k, 0.0) + v / len(pick)
        return total

    config = {"kind": "relation", "relation": to_dict(rel_cfg)}
    report = _fit("relation", model, cfg.relation_train, stage_dir, config, step_fn, cfg=cfg, info=info,
                  resume=resume)
    report.extra = {"gold_objects_matched": matched, "gold_objects": gold_objects,
                    "gold_relations_reachable": kept_rel, "gold_relations": gold_rel}
    return report


def _tensors(tubes: TrackedTubes) -> tuple[torch.Tensor, ...]:
    return (torch.from_numpy(tubes.feats).float(), torch.from_numpy(tubes.geometry).float(),
            torch.from_numpy(tubes.class_probs).float(), torch.from_numpy(tubes.valid).bool())


# ------------------------------------------------------------------------ driver
def train_pipeline(cfg: PipelineConfig, *, out_dir: Path | None = None, resume: bool = True,
                   only_stage: str | None = None) -> PipelineResult:
    """Run (or resume) the stages; finished stages are kept and skipped. Under torchrun the trained
    stages are data parallel (the engine averages gradients); the track stage, validation and every
    file are rank 0's."""
    if only_stage is not None and only_stage not in PIPELINE_STAGES:
        raise ConfigError(f"--stage must be one of {', '.join(PIPELINE_STAGES)} for a pipeline, got {only_stage!r}")
    out = Path(out_dir or cfg.output_dir)
    if cfg.reuse is not None:
        cfg = _from_reused(cfg)
    cfg = with_data_vocab(replace(cfg, output_dir=out))
    info = dist_utils.init_distributed("cpu")
    try:
        torch.set_num_threads(max(1, cfg.num_threads))
        if not resume and info.is_main:  # finished stages too: the earlier run moves aside, nothing is deleted
            start_over(out, part=only_stage, describes=("experiment.json",))
        dist_utils.barrier(info)
        _check_same_config(out, cfg, write=info.is_main)
        dist_utils.barrier(info)
        return _run_stages(cfg, out, info=info, resume=resume, only_stage=only_stage)
    finally:
        dist_utils.shutdown(info)


def _run_stages(cfg: PipelineConfig, out: Path, *, info: DistInfo, resume: bool,
                only_stage: str | None) -> PipelineResult:
    seg_from = Path(cfg.reuse) if cfg.reuse is not None else out
    reports = []
    for name in [only_stage] if only_stage else list(PIPELINE_STAGES):
        if name in ("segment", "track") and seg_from != out:
            reports.append(StageReport(name=name, skipped=True, extra={"reused": str(seg_from)}))
        elif name == "segment":
            reports.append(_segment_stage(cfg, out, info=info, resume=resume))
        elif name == "track":
            reports.append(_track_stage(cfg, out) if info.is_main else StageReport(name="track", skipped=True))
            dist_utils.barrier(info)  # the other ranks read the tubes rank 0 wrote
        else:
            reports.append(_relation_stage(cfg, out, seg_from, info=info, resume=resume))
    final = None
    if (seg_from / "segment" / "final").is_dir() and (out / "relation" / "final").is_dir():
        # written again only when a stage it holds was (re)trained now
        rebuilt = not (out / "final").is_dir() or any(not r.skipped for r in reports if r.name != "track")
        final = out / "final"
        if rebuilt and info.is_main:
            _assemble(cfg, out, seg_from)
        dist_utils.barrier(info)
        # every rank decides from the same file (rank 0 writes it only after the collective metric,
        # which every rank enters) and validates its share
        if cfg.data.val_videos > 0 and cfg.data.val_split and not (out / "val.json").is_file():
            _validate(cfg, out, final, info)
        if info.is_main:
            _record(out / "stages.json", reports)
        dist_utils.barrier(info)
    elif info.is_main:
        _record(out / "stages.json", reports)
    return PipelineResult(stages=reports, final_dir=final)


def _validate(cfg: PipelineConfig, out: Path, final: Path, info: DistInfo) -> dict[str, Any]:
    """Score the finished pipeline on the first ``val_videos`` validation videos (pvsg R@K and the
    segmentation quality): ``OUT/val.json``, and the log. Every rank scores every ``world_size``-th
    video; the recall sums the ranks' shares itself, the segmentation states are merged here."""
    from psg4d.eval import SegmentationQuality, evaluate

    reader = open_dataset(cfg.data.root / cfg.data.path)
    if cfg.data.val_split not in reader.splits:
        log.warning("validation: %s has no split %r; not validated", cfg.data.root / cfg.data.path, cfg.data.val_split)
        return {}
    predictor = PipelinePredictor.from_pretrained(final)
    ids = reader.video_ids(cfg.data.val_split)[: cfg.data.val_videos]
    mine = ids[info.rank :: info.world_size]
    seg = SegmentationQuality()
    preds = (predictor.predict(reader.read_video(vid))
             for vid in tqdm(mine, desc="validate", unit="video", leave=False, disable=not info.is_main))
    recall = evaluate(preds, [reader.read_graph(vid) for vid in mine], protocol="pvsg", also=[seg])
    for other in dist_utils.gather_objects(seg, info)[1:]:
        seg.merge(other)
    result = {"split": cfg.data.val_split, "videos": len(ids),
              "pvsg": {k: round(float(v), 2) for k, v in recall.items() if k in ("R@20", "R@50", "R@100", "mR@50")},
              "segmentation": seg.compute() if seg.scored else None}
    tube = (result["segmentation"] or {}).get("tube", {}).get("mean_tube_viou")
    if info.is_main:
        log.info("validation (%d %s videos): pvsg R@50 %.2f, mean tube vIoU %s", len(ids), cfg.data.val_split,
                 result["pvsg"].get("R@50", float("nan")), "n/a" if tube is None else f"{tube:.3f}")
        atomic_write_json(out / "val.json", result, indent=1)
    return result


def _record(path: Path, reports: list[StageReport]) -> None:
    """``stages.json``: each stage's report from the run that did its work (a stage skipped now keeps
    the earlier run's report, so its time is not lost)."""
    before = {r["name"]: r for r in json.loads(path.read_text())} if path.is_file() else {}
    now = {r.name: dict(r.__dict__) for r in reports}
    for name, rep in now.items():
        if rep["skipped"] and name in before and not before[name]["skipped"]:
            now[name] = before[name]
    atomic_write_json(path, [now.get(n) or before[n] for n in PIPELINE_STAGES if n in now or n in before], indent=1)


def _from_reused(cfg: PipelineConfig) -> PipelineConfig:
    """The reused run's data, segmenter and tracker settings: its tubes were made with them."""
    file = Path(cfg.reuse) / "experiment.json"
    if not file.is_file() or not (Path(cfg.reuse) / "segment" / "final").is_dir():
        raise ConfigError(f"reuse: {cfg.reuse} is not a pipeline run with a finished segment stage")
    before = from_dict(PipelineConfig, json.loads(file.read_text()), where="", source=str(file))
    return replace(cfg, data=before.data, segmenter=before.segmenter, tracker=before.tracker,
                   segment_train=before.segment_train)


def _assemble(cfg: PipelineConfig, out: Path, seg_from: Path) -> Path:
    """``OUT/final``: the segmenter and the relation model in one inference checkpoint."""
    seg, rel = QuerySegmenter(config=cfg.segmenter), RelationModel(config=cfg.relation)
    load_modules(seg_from / "segment" / "final", {"segmenter": seg})
    load_modules(out / "relation" / "final", {"relation": rel})
    walls = {s: float(json.loads((d / "final" / "trainer.json").read_text()).get("wall_s", 0.0))
             for s, d in (("segment", seg_from / "segment"), ("relation", out / "relation"))}
    # the registry's header first: psg4d.families reads which family this folder is
    return save_modules(out / "final", {"segmenter": seg, "relation": rel}, {**header(PIPELINE_KIND), **to_dict(cfg)},
                        meta={"wall_s": walls})


def _settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """What makes another pipeline in its recorded config: every section but where validation reads
    (which does not change what trained)."""
    keys = ("segmenter", "tracker", "relation", "segment_train", "relation_train", "reuse")
    data = {k: v for k, v in (cfg.get("data") or {}).items() if k not in ("val_split", "val_videos")}
    return flatten({**{k: cfg.get(k) for k in keys}, "data": data})


def _check_same_config(out: Path, cfg: PipelineConfig, *, write: bool) -> None:
    """A run folder belongs to one config (the engine's run-folder check); ``write``: record the
    config when the folder has none (rank 0 only)."""
    file = out / "experiment.json"
    now = json.loads(json.dumps(to_dict(cfg)))
    check_run_folder(file, now, _settings)
    if write and not file.is_file():
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(file, now, indent=1)
