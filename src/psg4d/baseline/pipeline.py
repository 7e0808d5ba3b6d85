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
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from psg4d.baseline.checkpoint import load_modules, load_state, save_modules
from psg4d.baseline.config import PIPELINE_STAGES, PipelineConfig, StageTrainConfig
from psg4d.baseline.predict import PIPELINE_KIND, PipelinePredictor
from psg4d.baseline.relation import RelationModel, training_pairs
from psg4d.baseline.seg_loss import SegmentationLoss
from psg4d.baseline.segmenter import QuerySegmenter, frame_targets
from psg4d.baseline.targets import match_tubes_to_gold, relation_targets
from psg4d.baseline.tracker import Tracker
from psg4d.baseline.types import TrackedTubes
from psg4d.config import build_with_overrides, from_dict, load_yaml, to_dict
from psg4d.data.readers import open_dataset
from psg4d.errors import ConfigError
from psg4d.utils.io import atomic_path, atomic_write_json, start_over
from psg4d.utils.threads import AdaptiveThreads

log = logging.getLogger(__name__)

STUFF_DEFAULT = ("floor", "wall", "sky", "road", "ground", "grass", "ceiling")


# ------------------------------------------------------------------------ config
def is_pipeline_yaml(path: str | Path) -> bool:
    """Whether a YAML experiment is a pipeline one (``kind: pipeline`` at its top)."""
    try:
        data = load_yaml(path)
    except ConfigError:
        return False
    return isinstance(data, dict) and data.get("kind") == PIPELINE_KIND


def load_pipeline_config(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    def build(data: dict[str, Any]) -> PipelineConfig:
        cfg = from_dict(PipelineConfig, data, where="", source=str(path))
        validate(cfg, where=str(path))
        return cfg

    return build_with_overrides(build, load_yaml(path), overrides, where=str(path))


def validate(cfg: PipelineConfig, *, where: str = "config") -> None:
    s, r, t = cfg.segmenter, cfg.relation, cfg.tracker
    checks = [
        ("segmenter.image_size", s.image_size >= 16 and s.image_size % 8 == 0, "a multiple of 8, at least 16"),
        ("segmenter.num_queries", s.num_queries >= 1, "positive"),
        ("segmenter.widths", len(s.widths) == 3 and min(s.widths) >= 1, "three positive widths"),
        ("segmenter.hidden", s.hidden >= s.heads and s.hidden % s.heads == 0, "a multiple of heads"),
        ("relation.hidden", r.hidden >= r.heads and r.hidden % r.heads == 0, "a multiple of heads"),
        ("relation.max_pairs", r.max_pairs >= 1, "positive"),
        ("tracker.max_missing", t.max_missing >= 0, "non-negative"),
        ("tracker.iou_weight", 0.0 <= t.iou_weight <= 1.0, "in [0, 1]"),
        ("num_threads", cfg.num_threads >= 1, "at least 1"),
    ]
    for name, st in (("segment_train", cfg.segment_train), ("relation_train", cfg.relation_train)):
        checks += [(f"{name}.steps", st.steps >= 0, "non-negative"),
                   (f"{name}.batch_size", st.batch_size >= 1, "positive"),
                   (f"{name}.lr", math.isfinite(st.lr) and 0 < st.lr < 1, "in (0, 1)"),
                   (f"{name}.save_every", st.save_every >= 1, "positive")]
    for key, ok, rule in checks:
        if not ok:
            raise ConfigError(f"{where}: {key} must be {rule}")


def with_data_vocab(cfg: PipelineConfig) -> PipelineConfig:
    """The segmenter's classes and the relation model's predicates from the training data (kept
    when the config names them)."""
    reader = open_dataset(cfg.data.root / cfg.data.path)
    seg, rel = cfg.segmenter, cfg.relation
    classes = list(seg.class_names) or list(reader.object_vocab)
    stuff = list(seg.stuff_names) or [c for c in classes if c in STUFF_DEFAULT]
    preds = list(rel.predicate_names) or list(reader.predicate_vocab)
    if not classes or not preds:
        raise ConfigError(f"{cfg.data.root / cfg.data.path}: the dataset names no object or predicate classes")
    return replace(cfg, segmenter=replace(seg, class_names=classes, stuff_names=stuff),
                   relation=replace(rel, predicate_names=preds, num_classes=len(classes), feat_dim=seg.hidden))


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


def _optimizer(module: torch.nn.Module, t: StageTrainConfig):
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=t.lr,
                            weight_decay=t.weight_decay)

    def factor(step: int) -> float:  # linear warm-up, then cosine to a tenth
        if step < t.warmup_steps:
            return (step + 1) / max(t.warmup_steps, 1)
        progress = (step - t.warmup_steps) / max(t.steps - t.warmup_steps, 1)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _fit(name: str, module: torch.nn.Module, t: StageTrainConfig, stage_dir: Path, config: dict[str, Any],
         step_fn: Callable[[np.random.Generator], dict[str, torch.Tensor]], *, seed: int, resume: bool,
         threads: int) -> StageReport:
    """The optimisation loop both trained stages share: ``step_fn(rng)`` returns the batch's losses;
    ``stage_dir/last`` is written every ``save_every`` steps (model, optimizer, scheduler, RNG)."""
    opt, sched = _optimizer(module, t)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    step, losses = 0, []
    state = load_state(stage_dir / "last") if resume else None
    if state is not None:
        load_modules(stage_dir / "last", {name: module})
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step = int(state["step"])
        rng.bit_generator.state = json.loads(state["numpy_rng"])
        torch.set_rng_state(state["torch_rng"])
        log.info("%s: resuming at step %d", name, step)
    module.train()
    t0 = time.perf_counter()
    wall0 = float(state.get("wall_s", 0.0)) if state else 0.0
    bar = tqdm(total=t.steps, initial=step, desc=name, unit="step", leave=False)
    adapt = AdaptiveThreads(max_threads=threads)
    while step < t.steps:
        if step % 20 == 0:
            adapt()
        out = step_fn(rng)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), t.max_grad_norm)
        opt.step()
        sched.step()
        step += 1
        losses.append(float(out["loss"].detach()))
        bar.update(1)
        if step % t.log_every == 0 or step == t.steps:
            parts = " ".join(f"{k} {float(v.detach()):.4f}" for k, v in out.items() if k != "loss")
            log.info("%s step %d/%d loss %.4f (%s) lr %.2e", name, step, t.steps, float(np.mean(losses[-t.log_every:])),
                     parts, sched.get_last_lr()[0])
        if step % t.save_every == 0 and step < t.steps:
            _save_last(stage_dir, name, module, config, opt, sched, step, rng, wall0 + time.perf_counter() - t0)
    bar.close()
    wall = wall0 + time.perf_counter() - t0
    module.eval()
    save_modules(stage_dir / "final", {name: module}, config, meta={"step": step, "wall_s": round(wall, 1)})
    final = float(np.mean(losses[-t.log_every:])) if losses else None
    return StageReport(name=name, steps=step, wall_s=wall, final_loss=final)


def _save_last(stage_dir, name, module, config, opt, sched, step, rng, wall) -> None:
    state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "step": step, "wall_s": wall,
             "numpy_rng": json.dumps(rng.bit_generator.state), "torch_rng": torch.get_rng_state()}
    save_modules(stage_dir / "last", {name: module}, config, state=state, meta={"step": step})


def _done(stage_dir: Path) -> dict[str, Any] | None:
    meta = stage_dir / "final" / "trainer.json"
    return json.loads(meta.read_text()) if meta.is_file() else None


# ------------------------------------------------------------------------ stage 1: segmentation
def _segment_stage(cfg: PipelineConfig, out: Path, *, resume: bool) -> StageReport:
    stage_dir = out / "segment"
    if (done := _done(stage_dir)) is not None:
        return StageReport(name="segment", steps=int(done["step"]), wall_s=float(done["wall_s"]), skipped=True)
    seg_cfg = cfg.segmenter
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

    def step_fn(rng: np.random.Generator) -> dict[str, torch.Tensor]:
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
        return criterion(model(rgb, depth), tg)

    config = {"kind": "segmenter", "segmenter": to_dict(seg_cfg)}
    report = _fit("segmenter", model, cfg.segment_train, stage_dir, config, step_fn, seed=cfg.seed, resume=resume,
                  threads=cfg.num_threads)
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


def train_ids(reader, cfg: PipelineConfig) -> list[str]:
    ids = reader.video_ids(cfg.data.train_split)
    return ids if cfg.data.max_videos is None else ids[: cfg.data.max_videos]


def _safe(video_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in video_id)


def cached_tubes(out: Path, split: str, video_id: str) -> TrackedTubes:
    return TrackedTubes.load(out / "track" / split / f"{_safe(video_id)}.npz")


# ------------------------------------------------------------------------ stage 3: relations
def _relation_stage(cfg: PipelineConfig, out: Path, tubes_from: Path, *, resume: bool) -> StageReport:
    stage_dir = out / "relation"
    if (done := _done(stage_dir)) is not None:
        return StageReport(name="relation", steps=int(done["step"]), wall_s=float(done["wall_s"]), skipped=True)
    rel_cfg = cfg.relation
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
        save_modules(stage_dir / "final", {"relation": model}, {"kind": "relation", "relation": to_dict(rel_cfg)},
                     meta={"step": 0, "wall_s": 0.0, "untrained": True})
        return StageReport(name="relation", extra={"untrained": True})
    log.info("relation: %d videos; %d of %d gold objects matched by a tube, %d of %d gold relations "
             "(predicate x pair) reachable", len(items), matched, gold_objects, kept_rel, gold_rel)

    def step_fn(rng: np.random.Generator) -> dict[str, torch.Tensor]:
        pick = rng.choice(len(items), size=min(cfg.relation_train.batch_size, len(items)), replace=False)
        total: dict[str, torch.Tensor] = {}
        for i in pick:
            x, tg = items[i]
            pairs = training_pairs(tg, None, rel_cfg.max_pairs, rng)
            loss = model.loss(model(*x, pairs=pairs), tg)
            for k, v in loss.items():
                total[k] = total.get(k, 0.0) + v / len(pick)
        return total

    config = {"kind": "relation", "relation": to_dict(rel_cfg)}
    report = _fit("relation", model, cfg.relation_train, stage_dir, config, step_fn, seed=cfg.seed, resume=resume,
                threads=cfg.num_threads)
    report.extra = {"gold_objects_matched": matched, "gold_objects": gold_objects,
                    "gold_relations_reachable": kept_rel, "gold_relations": gold_rel}
    return report


def _tensors(tubes: TrackedTubes) -> tuple[torch.Tensor, ...]:
    return (torch.from_numpy(tubes.feats).float(), torch.from_numpy(tubes.geometry).float(),
            torch.from_numpy(tubes.class_probs).float(), torch.from_numpy(tubes.valid).bool())


# ------------------------------------------------------------------------ driver
def train_pipeline(cfg: PipelineConfig, *, out_dir: Path | None = None, resume: bool = True,
                   only_stage: str | None = None) -> PipelineResult:
    """Run (or resume) the stages; finished stages are kept and skipped."""
    if only_stage is not None and only_stage not in PIPELINE_STAGES:
        raise ConfigError(f"--stage must be one of {', '.join(PIPELINE_STAGES)} for a pipeline, got {only_stage!r}")
    out = Path(out_dir or cfg.output_dir)
    if cfg.reuse is not None:
        cfg = _from_reused(cfg)
    cfg = with_data_vocab(replace(cfg, output_dir=out))
    torch.set_num_threads(max(1, cfg.num_threads))
    if not resume:  # finished stages too: the earlier run moves aside, nothing is deleted
        start_over(out, part=only_stage, describes=("experiment.json",))
    out.mkdir(parents=True, exist_ok=True)
    _check_same_config(out, cfg)
    seg_from = Path(cfg.reuse) if cfg.reuse is not None else out
    stages = [only_stage] if only_stage else list(PIPELINE_STAGES)
    reports = []
    for name in stages:
        if name == "segment":
            if seg_from != out:
                reports.append(StageReport(name="segment", skipped=True, extra={"reused": str(seg_from)}))
                continue
            reports.append(_segment_stage(cfg, out, resume=resume))
        elif name == "track":
            if seg_from != out:
                reports.append(StageReport(name="track", skipped=True, extra={"reused": str(seg_from)}))
                continue
            reports.append(_track_stage(cfg, out))
        else:
            reports.append(_relation_stage(cfg, out, seg_from, resume=resume))
    final = None
    if (seg_from / "segment" / "final").is_dir() and (out / "relation" / "final").is_dir():
        # written again only when a stage it holds was (re)trained now
        rebuilt = not (out / "final").is_dir() or any(not r.skipped for r in reports if r.name != "track")
        final = _assemble(cfg, out, seg_from) if rebuilt else out / "final"
        if cfg.data.val_videos > 0 and cfg.data.val_split and not (out / "val.json").is_file():
            _validate(cfg, out, final)
    _record(out / "stages.json", reports)
    return PipelineResult(stages=reports, final_dir=final)


def _validate(cfg: PipelineConfig, out: Path, final: Path) -> dict[str, Any]:
    """Score the finished pipeline on the first ``val_videos`` validation videos (pvsg R@K and the
    segmentation quality): ``OUT/val.json``, and the log."""
    from psg4d.eval import SegmentationQuality, evaluate

    reader = open_dataset(cfg.data.root / cfg.data.path)
    if cfg.data.val_split not in reader.splits:
        log.warning("validation: %s has no split %r; not validated", cfg.data.root / cfg.data.path, cfg.data.val_split)
        return {}
    predictor = PipelinePredictor.from_pretrained(final)
    ids = reader.video_ids(cfg.data.val_split)[: cfg.data.val_videos]
    seg = SegmentationQuality()
    preds = (predictor.predict(reader.read_video(vid))
             for vid in tqdm(ids, desc="validate", unit="video", leave=False))
    recall = evaluate(preds, [reader.read_graph(vid) for vid in ids], protocol="pvsg", also=[seg])
    result = {"split": cfg.data.val_split, "videos": len(ids),
              "pvsg": {k: round(float(v), 2) for k, v in recall.items() if k in ("R@20", "R@50", "R@100", "mR@50")},
              "segmentation": seg.compute() if seg.scored else None}
    tube = (result["segmentation"] or {}).get("tube", {}).get("mean_tube_viou")
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
    return save_modules(out / "final", {"segmenter": seg, "relation": rel}, to_dict(cfg),
                        meta={"wall_s": walls})


def _check_same_config(out: Path, cfg: PipelineConfig) -> None:
    """A run folder belongs to one config: resuming with other settings would mix two models."""
    file = out / "experiment.json"
    now = json.loads(json.dumps(to_dict(cfg)))
    if file.is_file():
        before = json.loads(file.read_text())
        keys = ("segmenter", "tracker", "relation", "segment_train", "relation_train", "reuse")
        # where validation reads does not change what trained
        data_keys = [k for k in now["data"] if k not in ("val_split", "val_videos")]
        diff = [k for k in keys if before.get(k) != now.get(k)]
        diff += [f"data.{k}" for k in data_keys if before.get("data", {}).get(k) != now["data"].get(k)]
        if diff:
            raise ConfigError(f"{out}: holds a pipeline run with other settings ({', '.join(diff)}); "
                              "give another --out")
    else:
        atomic_write_json(file, now, indent=1)
