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

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from psg4d.errors import ConfigError
from psg4d.experiments.output import check_output_folder, jsonable, machine_info
from psg4d.utils.io import atomic_write_json

log = logging.getLogger(__name__)

NAME = "transfer"
PRESET = "hoi_tiny.yaml"
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


def _world(cfg: TransferExperimentConfig) -> Path:
    """Synthesise (or reuse) the world: enough 4D training videos for the largest size, the test
    videos, and the 2D training images (70 / 15 / 15 splits of each)."""
    from psg4d.demo import DemoConfig, synthesise

    videos = max(math.ceil(max(cfg.sizes) / 0.7), math.ceil(cfg.test_videos / 0.15)) + 2
    images = math.ceil(cfg.images / 0.7) + 2
    demo = DemoConfig(out=cfg.run_dir, videos=videos, images=images, frames=cfg.frames, size=cfg.size,
                      seed=cfg.seed)
    synthesise(demo, cfg.run_dir / "data")
    return cfg.run_dir / "data"


def _experiment(cfg: TransferExperimentConfig, world: Path, n_4d: int, stages: list[dict], out: Path):
    from psg4d.config import load_yaml
    from psg4d.demo import PRESET_DIR
    from psg4d.train.stages import experiment_from_data

    data = load_yaml(PRESET_DIR / PRESET)
    data["data"] = {
        "root": str(world.resolve()),
        "train": [{"path": "4d", "split": "train", "max_videos": n_4d}],
        "val": [],  # nothing is tuned on the way
    }
    data["train"] = dict(data.get("train") or {}, val_every=0, save_every=0, progress=False, log_every=50)
    data["stages"] = stages
    data["output_dir"] = str(out)
    data["seed"] = cfg.seed
    return experiment_from_data(data, where=f"{NAME} experiment")


def _transfer_stages(cfg: TransferExperimentConfig, n_4d: int) -> list[dict]:
    lifted = [{"path": "2d", "split": "train", "lift_2d": True, "max_videos": cfg.images}]
    stages = []
    for i, kind in enumerate(STAGE_ORDER):
        stage: dict[str, Any] = {"name": kind, "kind": kind, "max_steps": cfg.steps[kind]}
        if i:
            stage["init"] = "previous"
        if kind == "4d_init":  # the tiny model learns everything from scratch here
            stage["trainable"] = ["encoder", "projector", "llm", "obj_proj", "mask_decoder"]
        if kind == "transfer_2d":
            stage["data"] = lifted
        if kind == "finetune_4d":  # real 4D videos, replaying some lifted images (see the stage kind)
            stage["data"] = [{"path": "4d", "split": "train", "max_videos": n_4d, "weight": 1.0},
                             {**lifted[0], "weight": cfg.replay_2d_weight}]
        stages.append(stage)
    return stages


def _train(exp, out: Path) -> tuple[Path, dict[str, Path], float]:
    """Train (or reuse a finished run); -> (final checkpoint, stage -> final dir, wall seconds)."""
    from psg4d.train.loop import train

    result = train(exp, out_dir=out, resume=True)
    wall = sum(st.wall_s for st in result.stages)
    if any(st.skipped for st in result.stages):  # reused: the training time of the original run
        wall = sum(float(json.loads((st.final_dir / "trainer.json").read_text()).get("wall_s", 0.0))
                   for st in result.stages)
    return result.final_dir, {st.name: st.final_dir for st in result.stages}, wall


# ------------------------------------------------------------------------ scoring


def held_out_graphs(gts: Iterable, novel: set[str]) -> list:
    """Copies of ``gts`` keeping only the relations whose subject or object category is in ``novel``."""
    out = []
    for g in gts:
        cats = {o.object_id: o.category for o in g.objects}
        keep = [r for r in g.relations if cats.get(r.subject_id) in novel or cats.get(r.object_id) in novel]
        out.append(replace(g, relations=keep))
    return out


def _score(ckpt: Path, world: Path, cfg: TransferExperimentConfig, novel: set[str], *, rgb_only: bool) -> dict:
    from psg4d.data.readers import open_dataset
    from psg4d.eval import evaluate
    from psg4d.infer.predictor import Predictor, PredictorConfig
    from psg4d.model.psg4d_llm import PSG4DModel

    reader = open_dataset(world / "4d")
    ids = reader.video_ids("test")[: cfg.test_videos]
    predictor = Predictor(model=PSG4DModel.from_pretrained(ckpt), config=PredictorConfig(
        max_new_tokens=48 if cfg.quick else None))
    preds, gts = [], []
    t0 = time.perf_counter()
    for vid in ids:
        video = reader.read_video(vid)
        if rgb_only:
            video = replace(video, depth=None)
        preds.append(predictor.predict(video))
        gts.append(reader.read_graph(vid))
    seconds = time.perf_counter() - t0
    metrics = {}
    for protocol in ("pvsg", "volumetric"):
        r = evaluate(preds, {g.video_id: g for g in gts}, protocol=protocol)
        metrics[protocol] = {k: round(float(v), 2) for k, v in r.items() if k.startswith(("R@", "mR@"))}
    held = held_out_graphs(gts, novel)
    n_held = sum(len(g.relations) for g in held)
    held_r50 = evaluate(preds, {g.video_id: g for g in held}, protocol="pvsg")["R@50"] if n_held else None
    return {"metrics": metrics, "held_out_recall@50": None if held_r50 is None else round(float(held_r50), 2),
            "held_out_relations": n_held, "predict_s_per_video": round(seconds / max(len(ids), 1), 3),
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
    world = _world(cfg)
    n_2d = cfg.images
    records: list[dict[str, Any]] = []
    features: dict[str, Any] = {}
    for n_4d in sorted(cfg.sizes):
        novel = novel_categories(world, n_4d, n_2d)
        log.info("4D size %d: categories only in the 2D images: %s", n_4d, sorted(novel))
        base = cfg.run_dir / f"4d_{n_4d}"
        transfer_final, finals, transfer_wall = _train(
            _experiment(cfg, world, n_4d, _transfer_stages(cfg, n_4d), base / "transfer"), base / "transfer")
        init_meta = finals["4d_init"] / "trainer.json"
        init_wall = float(json.loads(init_meta.read_text()).get("wall_s", 0.0))
        equal = [{"name": "4d_init", "kind": "4d_init", "max_steps": cfg.total_steps,
                  "trainable": ["encoder", "projector", "llm", "obj_proj", "mask_decoder"]}]
        equal_final, _, equal_wall = _train(_experiment(cfg, world, n_4d, equal, base / "equal_steps"),
                                            base / "equal_steps")
        arms = [
            ("transfer", transfer_final, cfg.total_steps, transfer_wall, ("rgbd", "rgb")),
            ("4d_only", finals["4d_init"], cfg.steps["4d_init"], init_wall, ("rgbd", "rgb")),
            ("4d_only_equal_steps", equal_final, cfg.total_steps, equal_wall, ("rgbd",)),
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
                features[stage] = feature_similarity(finals[stage], world, cfg.feature_videos)
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
