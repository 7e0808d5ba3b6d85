"""Design experiment ``form_reading``: how well size and shape are measured from a tube's depth.

    psg4d experiment form_reading [--world-seed 1] [--above 0 --above 0.05 ...] [--lr 0.003 --lr 0.01]
                                  [--hidden 0 --hidden 32] [--quick] [--out runs/experiments/form_reading]

It chooses the defaults of :mod:`psg4d.model.form_geometry` that ``attribute_fit`` trains with
(``ABOVE_METRES``, the reader's width, ``ChainExperimentConfig.form_lr``), so it runs on a design world
(``--world-seed``, default 1) and scores its validation split. The form reader
(:class:`~psg4d.model.form_geometry.FormReader`) is trained alone, as ``attribute_fit`` trains it: on the
true tubes of the training videos' described objects, cut to the mask decoder's cells (``--grid``, the tiny
model's 16) and snapped to the pixels more than ``--above`` metres in front of the surface around them
(``0``: not snapped), once per training seed, ``--steps`` steps of ``BATCH_OBJECTS`` objects with AdamW. Each setting reads the
validation videos' described objects the same way; the novel objects of the design world's test videos (in
no training data) are read too, for diagnosis only: nothing is chosen on them.

Writes ``OUT/form_reading.json``: ``design_world_seed``, ``training_seeds``, ``arms`` (above, lr, hidden,
``validation`` and ``novel_test``: percent of objects whose size, shape and both were read right, the mean over
the training seeds (``--seeds``, default 0, 1, 2: a plateau one seed cannot rank), ``both_std``, and how many
objects; ``seeds``: each seed's scores), ``chosen`` (the setting with the most validation objects read right in
both, mean over the seeds; ties: the first in grid order) and ``OUT/form_reading.svg``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from psg4d.errors import ConfigError
from psg4d.experiments.chain_config import NOVEL
from psg4d.experiments.common import DESIGN_WORLDS, synthetic_world
from psg4d.experiments.output import check_output_folder, jsonable, machine_info
from psg4d.utils.io import atomic_write_json

log = logging.getLogger(__name__)

NAME = "form_reading"
#: objects a training step reads (attribute_fit's two clips hold about ten described objects)
BATCH_OBJECTS = 10


@dataclass(kw_only=True)
class FormReadingConfig:
    out: Path = Path("runs/experiments/form_reading")
    run_dir: Path = Path("runs/experiments/form_reading")
    world_seed: int = 1  # a design world: this experiment chooses defaults
    videos: int = 200  # 4D training videos, as the chain's attribute_fit reads
    val_videos: int = 60
    test_videos: int = 60  # their novel objects: diagnosis only
    frames: int = 16
    size: int = 64
    grid: int = 16  # the mask decoder's cells per side
    aboves: list[float] = field(default_factory=lambda: [0.0, 0.005, 0.01, 0.02, 0.05, 0.08])
    lrs: list[float] = field(default_factory=lambda: [0.003, 0.01])
    hiddens: list[int] = field(default_factory=lambda: [0, 32])
    steps: int = 1500
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # training seeds: scores are their means
    quick: bool = False

    def __post_init__(self) -> None:
        if self.quick:
            self.videos, self.val_videos, self.test_videos, self.frames, self.size = 6, 3, 3, 6, 32
            self.grid, self.steps, self.lrs, self.hiddens = 8, 5, self.lrs[:1], self.hiddens[-1:]
            self.seeds = self.seeds[:2]
        if self.world_seed not in DESIGN_WORLDS and not self.quick:
            raise ConfigError(f"--world-seed {self.world_seed}: this experiment chooses defaults, so it runs on a "
                              f"design world ({DESIGN_WORLDS}), never on one that judges")
        if not self.aboves or any(not (0 <= a < 1) for a in self.aboves):
            raise ConfigError(f"--above must be metres in [0, 1) (0: not snapped), got {self.aboves}")
        if not self.lrs or any(not (0 < lr < 1) for lr in self.lrs):
            raise ConfigError(f"--lr must be in (0, 1), got {self.lrs}")
        if not self.hiddens or any(h < 0 for h in self.hiddens):
            raise ConfigError(f"--hidden must be >= 0 (0: a linear read-out), got {self.hiddens}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"--seeds must be distinct training seeds, got {self.seeds}")
        if self.steps < 1 or self.videos < 1 or self.val_videos < 1 or self.grid < 1:
            raise ConfigError("--steps, --videos, --val-videos and --grid must be positive")


def _objects(reader, split: str, limit: int, cfg: FormReadingConfig, above: float, only: set[str] | None = None):
    """``(geometry [N, NUM_FEATURES], fields)`` of the described objects of a split's first ``limit`` videos,
    their true tubes cut to the cells and snapped at ``above`` (0: not snapped) as attribute_fit reads them."""
    from psg4d.data.descriptions import object_description
    from psg4d.data.synth.describe import description_fields
    from psg4d.model.batching import frame_intrinsics, tube_target, video_tensors
    from psg4d.model.form_geometry import measure_tubes

    feats, truths = [], []
    for vid in reader.video_ids(split)[:limit]:
        sample = reader.read(vid)
        k = frame_intrinsics(sample.video, cfg.size)
        idx = np.arange(sample.video.num_frames)
        _, depth = video_tensors(sample.video, idx, cfg.size)
        if depth is None or k is None:
            raise ConfigError(f"{reader.root}: video {vid} has no depth or intrinsics to measure its objects' form")
        objs = [(o, f) for o in sample.graph.objects if o.tube is not None and (only is None or o.category in only)
                and (f := description_fields(object_description(o) or "")) is not None]
        if not objs:
            continue
        tubes = torch.stack([tube_target(sample.graph, o.object_id, idx, cfg.size) for o, _ in objs])
        feats.append(measure_tubes(tubes, depth[:, 0], k, grid=cfg.grid, above=above))
        truths += [f for _, f in objs]
    return (torch.cat(feats) if feats else torch.zeros(0)), truths


def _train(x: torch.Tensor, truths: list[dict[str, str]], cfg: FormReadingConfig, lr: float, hidden: int, seed: int):
    from psg4d.data.synth.describe import attribute_values
    from psg4d.model.form_geometry import FormReader

    torch.manual_seed(seed)
    reader = FormReader(shapes=attribute_values()["shape"], hidden=hidden)
    opt = torch.optim.AdamW(reader.parameters(), lr=lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    sizes, shapes = [t["size"] for t in truths], [t["shape"] for t in truths]
    reader.train()
    for _ in range(cfg.steps):
        pick = torch.randint(0, x.shape[0], (min(BATCH_OBJECTS, x.shape[0]),), generator=gen)
        loss = reader.loss(x[pick], [sizes[i] for i in pick.tolist()], [shapes[i] for i in pick.tolist()])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return reader.eval()


def _score(reader, x: torch.Tensor, truths: list[dict[str, str]]) -> dict[str, Any]:
    from psg4d.data.synth.describe import attribute_values

    n = len(truths)
    if n == 0:
        return {"size": None, "shape": None, "both": None, "objects": 0}
    values = attribute_values()
    scores = reader.field_scores(x, values)
    size = [values["size"][int(i)] for i in scores["size"].argmax(1)]
    shape = [values["shape"][int(i)] for i in scores["shape"].argmax(1)]
    hit_size = [t["size"] == s for t, s in zip(truths, size)]
    hit_shape = [t["shape"] == s for t, s in zip(truths, shape)]
    pct = lambda hits: round(100.0 * sum(hits) / n, 2)  # noqa: E731
    return {"size": pct(hit_size), "shape": pct(hit_shape), "both": pct([a and b for a, b in zip(hit_size, hit_shape)]),
            "objects": n}


def _mean(per_seed: list[dict[str, Any]], part: str) -> dict[str, Any]:
    """The seeds' mean of each score of ``part`` (``both`` also its sample std, 0 for one seed)."""
    rows = [r[part] for r in per_seed]
    if rows[0]["objects"] == 0:
        return {**rows[0], "both_std": None}
    out = {k: round(float(np.mean([r[k] for r in rows])), 2) for k in ("size", "shape", "both")}
    std = float(np.std([r["both"] for r in rows], ddof=1)) if len(rows) > 1 else 0.0
    return {**out, "both_std": round(std, 2), "objects": rows[0]["objects"]}


def run(cfg: FormReadingConfig) -> dict[str, Any]:
    from psg4d.data.readers import open_dataset

    out = check_output_folder(cfg.out, name=NAME, quick=cfg.quick)
    world = synthetic_world(cfg.run_dir / f"world{cfg.world_seed}", train_videos=cfg.videos, val_videos=cfg.val_videos,
                            test_videos=cfg.test_videos, frames=cfg.frames, size=cfg.size, seed=cfg.world_seed,
                            novel=NOVEL, stamp=cfg.run_dir / f"world{cfg.world_seed}.json", reuse="refuse_other")
    reader = open_dataset(world / "4d")
    arms = []
    for above in cfg.aboves:
        train = _objects(reader, "train", cfg.videos, cfg, above)
        val = _objects(reader, "val", cfg.val_videos, cfg, above)
        novel = _objects(reader, "test", cfg.test_videos, cfg, above, only=set(NOVEL))
        if not train[1]:
            raise ConfigError(f"{world}: no described object in the training videos to learn from")
        for hidden in cfg.hiddens:
            for lr in cfg.lrs:
                per_seed = []
                for seed in cfg.seeds:
                    form = _train(*train, cfg, lr, hidden, seed)
                    per_seed.append({"seed": seed, "validation": _score(form, *val), "novel_test": _score(form, *novel)})
                arm = {"above": above, "lr": lr, "hidden": hidden, "validation": _mean(per_seed, "validation"),
                       "novel_test": _mean(per_seed, "novel_test"), "seeds": per_seed}
                log.info("above %g m, width %d, lr %g: validation %s, novel (test) %s", above, hidden, lr,
                         arm["validation"], arm["novel_test"])
                arms.append(arm)
    best = max(arms, key=lambda a: a["validation"]["both"] or 0.0)  # max keeps the first of equals
    result = {
        "design_world_seed": cfg.world_seed,
        "judged": False,
        "training_seeds": list(cfg.seeds),
        "scored_on": f"validation split of world {cfg.world_seed} (first {cfg.val_videos} videos); the novel "
                     f"objects of its first {cfg.test_videos} test videos for diagnosis only",
        "arms": arms,
        "chosen": {"above": best["above"], "lr": best["lr"], "hidden": best["hidden"],
                   "validation_both": best["validation"]["both"],
                   "validation_both_std": best["validation"]["both_std"],
                   "rule": "the most validation objects with size and shape both read right, mean over the training "
                           "seeds; ties: the first"},
        "quick": cfg.quick,
        "machine": machine_info(),
        "config": jsonable(asdict(cfg)),
    }
    atomic_write_json(out / f"{NAME}.json", result, indent=1)
    _plot(out / f"{NAME}.svg", arms)
    log.info("wrote %s and %s", out / f"{NAME}.json", out / f"{NAME}.svg")
    return result


def _plot(path: Path, arms: list[dict[str, Any]]) -> None:
    from psg4d.viz.plots import write_bar_chart

    labels = [f"above {a['above']:g} m, width {a['hidden']}, lr {a['lr']:g}" for a in arms]
    series = {"validation: size and shape": [a["validation"]["both"] or 0.0 for a in arms],
              "novel (test, diagnosis): size and shape": [a["novel_test"]["both"] or 0.0 for a in arms]}
    write_bar_chart(path, labels, series, title="form reader: size and shape read from depth (design world)", unit="%")
