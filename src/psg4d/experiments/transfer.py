"""Experiment ``transfer``: what the 2D-to-4D transfer buys when 4D training videos are scarce.

    psg4d experiment transfer [--sizes 100 400] [--images 2000] [--quick] [--out runs/experiments/transfer]

One synthetic HOI world holds the 4D videos and the 2D scene-graph images (the 2D set has
every category, the 4D training split none of the held-out ones). Per 4D size N (the first N
videos of the 4D training split), on the same 4D test videos:

* ``transfer`` — the five stages (``4d_init`` -> ``estimator_fit`` -> ``pseudo4d_init`` ->
  ``transfer_2d`` on the lifted 2D training images -> ``finetune_4d``), each from the
  previous one's final weights;
* ``4d_only`` — the transfer run's own ``4d_init`` stage (the same model before the transfer);
* ``4d_only_equal_steps`` — ``4d_init`` alone, trained for as many steps as the whole pipeline.

Each arm is scored on RGB-D input, and ``transfer`` and ``4d_only`` also on RGB alone (depth
withheld: the transfer model estimates it with F_de). ``held_out_recall@50`` is pvsg R@50 on the
test relations whose subject or object category never occurs in the 4D training videos used
but does occur in the 2D training images.

The feature analysis (smallest size): per-token cosine and per-map SSIM between what the
estimators imagine from a validation clip's first frame and the clip's real branch features,
after stage 2 and after stage 3, as histograms (``transfer_features.png``).

Writes ``OUT/transfer.json`` (a list of records: ``arm``, ``num_4d_videos``, ``num_2d_images``,
``input``, ``metrics`` {protocol: R/mR@K}, ``held_out_recall@50``, ``steps``, ``wall_s``),
``OUT/transfer_features.json`` and ``OUT/transfer_features.png``. Validation is off in these
runs: every setting is fixed in advance (the test split is only scored).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from psg4d.errors import ConfigError
from psg4d.experiments.common import (
    FROM_SCRATCH,
    TrainedRun,
    from_scratch_stage,
    held_out_graphs,
    llm_experiment,
    checkpoint_predictor,
    predict_and_score,
    synthetic_world,
    train_or_reuse,
)
from psg4d.experiments.output import check_output_folder, jsonable, machine_info
from psg4d.utils.io import atomic_write_json

log = logging.getLogger(__name__)

NAME = "transfer"
STAGE_ORDER = ("4d_init", "estimator_fit", "pseudo4d_init", "transfer_2d", "finetune_4d")


@dataclass(kw_only=True)
class TransferExperimentConfig:
    out: Path = Path("runs/experiments/transfer")  # the shipped results: --out bench/results
    run_dir: Path = Path("runs/experiments/transfer")
    sizes: list[int] = field(default_factory=lambda: [100, 400])  # 4D training videos per arm
    images: int = 2000  # 2D training images (the lifted set)
    test_videos: int = 100
    frames: int = 16
    size: int = 64
    seed: int = 1
    # optimizer steps per stage of the transfer pipeline (4d_init is also the 4d_only arm)
    steps: dict[str, int] = field(default_factory=lambda: {
        "4d_init": 600, "estimator_fit": 200, "pseudo4d_init": 200, "transfer_2d": 1000, "finetune_4d": 200,
    })
    feature_videos: int = 16  # validation clips of the feature analysis
    # sampling weight of the lifted 2D images next to the 4D videos (1.0) in finetune_4d
    replay_2d_weight: float = 0.5
    quick: bool = False

    def __post_init__(self) -> None:
        if self.quick:
            self.sizes, self.images, self.test_videos = [4], 12, 3
            self.frames, self.size, self.feature_videos = 6, 32, 1
            self.steps = {name: 2 for name in STAGE_ORDER}
        if not self.sizes or min(self.sizes) < 1 or self.images < 1 or self.test_videos < 1:
            raise ConfigError("--sizes, --images and --test-videos must be positive")
        missing = [s for s in STAGE_ORDER if self.steps.get(s, 0) < 1]
        if missing:
            raise ConfigError(f"steps: every stage needs >= 1 step, missing or zero: {missing}")

    @property
    def total_steps(self) -> int:
        return sum(self.steps[s] for s in STAGE_ORDER)


# ----------------------------------------------------------------------------- world


def transfer_world(cfg: TransferExperimentConfig) -> Path:
    """Synthesise (or reuse) the world in ``RUN_DIR/data``: enough 4D training videos for the largest
    size, the test videos, and the 2D training images."""
    return synthetic_world(cfg.run_dir / "data", train_videos=max(cfg.sizes), test_videos=cfg.test_videos,
                           train_images=cfg.images, frames=cfg.frames, size=cfg.size, seed=cfg.seed)


def transfer_stages(cfg: TransferExperimentConfig, n_4d: int) -> list[dict[str, Any]]:
    """The five stages of the transfer pipeline on ``n_4d`` 4D training videos, each from the
    previous one's final weights."""
    lifted = [{"path": "2d", "split": "train", "lift_2d": True, "max_videos": cfg.images}]
    stages = []
    for i, kind in enumerate(STAGE_ORDER):
        stage: dict[str, Any] = {"name": kind, "kind": kind, "max_steps": cfg.steps[kind]}
        if i:
            stage["init"] = "previous"
        if kind == "4d_init":  # the tiny model learns everything from scratch here
            stage["trainable"] = list(FROM_SCRATCH)
        if kind == "transfer_2d":
            stage["data"] = lifted
        if kind == "finetune_4d":  # real 4D videos, replaying some lifted images (see the stage kind)
            stage["data"] = [{"path": "4d", "split": "train", "max_videos": n_4d, "weight": 1.0},
                             {**lifted[0], "weight": cfg.replay_2d_weight}]
        stages.append(stage)
    return stages


def train_transfer(cfg: TransferExperimentConfig, world: Path, n_4d: int) -> TrainedRun:
    """The transfer arm's run on ``n_4d`` 4D videos (``RUN_DIR/4d_N/transfer``; its ``4d_init`` stage
    is the ``4d_only`` arm), trained or reused when finished."""
    out = cfg.run_dir / f"4d_{n_4d}" / "transfer"
    return train_or_reuse(_experiment(cfg, world, n_4d, transfer_stages(cfg, n_4d), out), out)


def _experiment(cfg: TransferExperimentConfig, world: Path, n_4d: int, stages: list[dict], out: Path):
    return llm_experiment(world, stages=stages, out_dir=out, seed=cfg.seed, train_videos=n_4d,
                          where=f"{NAME} experiment")


# ------------------------------------------------------------------------ scoring


def _score(ckpt: Path, world: Path, cfg: TransferExperimentConfig, novel: set[str], *, rgb_only: bool) -> dict:
    from psg4d.eval import evaluate

    scored = predict_and_score(checkpoint_predictor(ckpt, quick=cfg.quick), world / "4d", limit=cfg.test_videos,
                               without_depth=rgb_only)
    preds = scored.predictions
    held = held_out_graphs(scored.truths, novel)
    n_held = sum(len(g.relations) for g in held)
    held_r50 = evaluate(preds, {g.video_id: g for g in held}, protocol="pvsg")["R@50"] if n_held else None
    return {"metrics": scored.metrics,
            "held_out_recall@50": None if held_r50 is None else round(float(held_r50), 2),
            "held_out_relations": n_held, "predict_s_per_video": round(scored.predict_s_per_video, 3),
            "depth_source": preds[0].meta.get("depth_source") if preds else None}


def novel_categories(world: Path, n_4d: int, n_2d: int) -> set[str]:
    """Categories of the 2D training images that no used 4D training video shows."""
    from psg4d.data.readers import open_dataset

    r4, r2 = open_dataset(world / "4d"), open_dataset(world / "2d")
    seen_4d = {o.category for v in r4.video_ids("train")[:n_4d] for o in r4.read_graph(v, with_masks=False).objects}
    seen_2d = {o.category for v in r2.video_ids("train")[:n_2d] for o in r2.read_graph(v, with_masks=False).objects}
    return seen_2d - seen_4d


# ---------------------------------------------------------------- feature analysis


def ssim_maps(a: torch.Tensor, b: torch.Tensor, window: int = 3) -> torch.Tensor:
    """Mean SSIM of each feature map: ``a``, ``b`` ``[M, h, w]`` -> ``[M]``. Both maps are
    standardised with the real map's (``b``'s) statistics, so the constants are those of data
    with unit spread (C1 = 0.01^2, C2 = 0.03^2 of a range of 6 standard deviations)."""
    mu, sd = b.mean(dim=(1, 2), keepdim=True), b.std(dim=(1, 2), keepdim=True).clamp(min=1e-6)
    a, b = ((a - mu) / sd)[:, None], ((b - mu) / sd)[:, None]  # [M, 1, h, w]
    pool = lambda x: F.avg_pool2d(x, window, stride=1, padding=window // 2, count_include_pad=False)  # noqa: E731
    ma, mb = pool(a), pool(b)
    va, vb, cov = pool(a * a) - ma**2, pool(b * b) - mb**2, pool(a * b) - ma * mb
    c1, c2 = (0.01 * 6) ** 2, (0.03 * 6) ** 2
    s = ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2))
    return s.mean(dim=(1, 2, 3))


@torch.no_grad()
def feature_similarity(ckpt: Path, world: Path, videos: int) -> dict[str, np.ndarray]:
    """Similarity of imagined to real features on ``videos`` validation clips: the pseudo clip
    rolled out from frame 0 (RGB and depth) against the real clip, per token (cosine) and per
    feature map (SSIM)."""
    from psg4d.data.readers import open_dataset
    from psg4d.model.batching import resample_indices, video_tensors
    from psg4d.model.encoder import disparity_scale_of
    from psg4d.model.psg4d_llm import PSG4DModel

    model = PSG4DModel.from_pretrained(ckpt)
    if model.estimators is None:
        raise ConfigError(f"{ckpt}: no estimators to analyse")
    reader = open_dataset(world / "4d")
    out: dict[str, list[np.ndarray]] = {f"{m}_{k}": [] for m in ("rgb", "depth") for k in ("cosine", "ssim")}
    for vid in reader.video_ids("val")[:videos]:
        video = reader.read_video(vid)
        idx = resample_indices(video.num_frames, min(video.num_frames, model.config.max_frames))
        rgb, depth = video_tensors(video, idx, model.config.image_size)
        scale = torch.tensor([disparity_scale_of(video, model.config.encoder)])
        real = model.encoder.branches(rgb[None], depth[None], disparity_scale=scale)
        p_rgb, p_depth = model.estimators.pseudo_clip(real.rgb[:, :1], real.rgb.shape[1])
        h, w = real.hw
        for modality, pred, true in (("rgb", p_rgb, real.rgb), ("depth", p_depth, real.depth)):
            pred, true = pred[0, 1:], true[0, 1:]  # [T-1, N, D]: the imagined frames
            out[f"{modality}_cosine"].append(F.cosine_similarity(pred, true, dim=-1).flatten().numpy())
            maps = lambda x: x.reshape(x.shape[0], h, w, -1).permute(0, 3, 1, 2).reshape(-1, h, w)  # noqa: E731
            out[f"{modality}_ssim"].append(ssim_maps(maps(pred), maps(true)).numpy())
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in out.items()}


# ---------------------------------------------------------------------------- run


def run(cfg: TransferExperimentConfig) -> list[dict[str, Any]]:
    from psg4d.viz.plots import histograms_png

    out = check_output_folder(cfg.out, name=NAME, quick=cfg.quick)
    world = transfer_world(cfg)
    n_2d = cfg.images
    records: list[dict[str, Any]] = []
    features: dict[str, Any] = {}
    for n_4d in sorted(cfg.sizes):
        novel = novel_categories(world, n_4d, n_2d)
        log.info("4D size %d: categories only in the 2D images: %s", n_4d, sorted(novel))
        transfer = train_transfer(cfg, world, n_4d)
        equal_out = cfg.run_dir / f"4d_{n_4d}" / "equal_steps"
        equal = train_or_reuse(_experiment(cfg, world, n_4d, [from_scratch_stage(cfg.total_steps)], equal_out),
                               equal_out)
        arms = [
            ("transfer", transfer.final_dir, cfg.total_steps, transfer.wall_s, ("rgbd", "rgb")),
            ("4d_only", transfer.stage_dirs["4d_init"], cfg.steps["4d_init"], transfer.stage_wall_s["4d_init"],
             ("rgbd", "rgb")),
            ("4d_only_equal_steps", equal.final_dir, cfg.total_steps, equal.wall_s, ("rgbd",)),
        ]
        for arm, ckpt, steps, wall, inputs in arms:
            for inp in inputs:
                scored = _score(ckpt, world, cfg, novel, rgb_only=inp == "rgb")
                records.append({
                    "arm": arm, "num_4d_videos": n_4d, "num_2d_images": n_2d if arm == "transfer" else 0,
                    "input": inp, **scored, "steps": steps, "wall_s": round(wall, 1),
                    "held_out_categories": sorted(novel),
                })
                log.info("%s (%d 4D videos, %s): pvsg R@50 %.2f, held-out R@50 %s", arm, n_4d, inp,
                         scored["metrics"]["pvsg"]["R@50"], scored["held_out_recall@50"])
        if n_4d == min(cfg.sizes):
            for stage in ("estimator_fit", "pseudo4d_init"):
                features[stage] = feature_similarity(transfer.stage_dirs[stage], world, cfg.feature_videos)
    atomic_write_json(out / f"{NAME}.json", records, indent=1)
    summary = {stage: {k: {"mean": round(float(v.mean()), 4) if v.size else None, "n": int(v.size)}
                       for k, v in feats.items()} for stage, feats in features.items()}
    atomic_write_json(out / f"{NAME}_features.json", {
        "num_4d_videos": min(cfg.sizes), "videos": cfg.feature_videos, "split": "val", "similarity": summary,
        "machine": machine_info(), "config": jsonable(asdict(cfg)),
    }, indent=1)
    labels = {"estimator_fit": "after stage 2 (estimator_fit)", "pseudo4d_init": "after stage 3 (pseudo4d_init)"}
    titles = {"rgb_cosine": "RGB: per-token cosine", "depth_cosine": "depth: per-token cosine",
              "rgb_ssim": "RGB: per-map SSIM", "depth_ssim": "depth: per-map SSIM"}
    histograms_png(
        out / f"{NAME}_features.png",
        {title: {labels[s]: f[key] for s, f in features.items()} for key, title in titles.items()},
        title=f"2D-to-4D transfer: imagined frames 1..T-1 from frame 0, {cfg.feature_videos} val clips"
              f" ({min(cfg.sizes)} 4D training videos)",
    )
    log.info("wrote %s, %s and %s", out / f"{NAME}.json", out / f"{NAME}_features.json",
             out / f"{NAME}_features.png")
    return records
