"""Experiment ``colour_reading``: how should the attribute head's colour be read under a predicted tube?

    psg4d experiment colour_reading [--world-seed 1] [--steps 150 --steps 1500] [--lr 0.001 --lr 0.01]
                                    [--quick] [--out runs/experiments/colour_reading]
    psg4d experiment colour_reading --ckpt CKPT --data DIR [--world-seed 1]

A **design** experiment: it chose :mod:`psg4d.model.attributes`' colour reading and the ``chain``
experiment's ``attribute_fit`` budget and learning rate, so it runs on a design world (``--world-seed``, default 1,
one of :data:`~psg4d.experiments.common.DESIGN_WORLDS`) and scores that world's validation videos
only; nothing judged comes from it.

The attribute head (:class:`~psg4d.model.attributes.AttributeHead`) is trained alone, as the
``attribute_fit`` stage trains it (the tiny preset's optimizer and schedule, 2 clips of 8 frames a
step, :func:`~psg4d.model.attributes.attribute_loss` against the clips' per-pixel categories), for
each budget of ``--steps`` at each learning rate of ``--lr`` (0.001 is the tiny preset's). Its colour fields read only the frames' colours, so no scene encoder is
needed: the form fields get a blank map and are not scored. Every described object of the first
``--val-videos`` validation videos is then read (:func:`~psg4d.model.attributes.read_attributes`)
under three tubes:

* ``true`` — its true mask tube;
* ``cells`` — the tube cut to the model's cells (the tiny model decodes masks on a 16x16 grid for
  64-pixel frames: a cell is in when half of it is);
* ``widened`` — those cells widened by one cell in every frame: a predicted tube spilling over its
  object's edges, as the chain's tubes do;

(an object whose tube the cells lose counts as read wrong)

each two ways: ``sum`` (the colour's log-probabilities summed under the tube, as the form fields are
read) and ``contrast`` (against the ring of cells around the tube,
:func:`~psg4d.model.attributes.contrast_scores`).

With ``--ckpt`` (a checkpoint trained on the design world, ``--data`` its dataset folder) nothing
is trained: the checkpoint's own head reads the maps of its own scene encoder, so every field (size,
colour, shape, pattern, pattern colour) is scored, and all of them together, under the same three
tubes and two readings, and a third, ``geometry``, where the checkpoint's head has a form reader
(``model.attribute_form: geometry``, :mod:`psg4d.model.form_geometry`: size and shape measured from the
tube's depth, the other fields against the ring); written to ``OUT/colour_reading_checkpoint.json`` (``arms``: reading, tube,
one percentage per field and ``all``; ``chosen``: the reading with the best mean ``all``).

Writes ``OUT/colour_reading.json``: ``design_world_seed``, ``arms`` (steps, lr, reading, tube,
``colour`` and ``pattern_colour``: percent of objects read right, ``objects``), ``chosen`` (the steps,
lr and reading with the best mean colour accuracy over the three tubes; ties: fewer steps) and
``OUT/colour_reading.svg``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from psg4d.errors import ConfigError
from psg4d.experiments.chain_config import NOVEL
from psg4d.experiments.common import DESIGN_WORLDS, TINY_PRESET, synthetic_world
from psg4d.experiments.output import check_output_folder, jsonable, machine_info
from psg4d.utils.io import atomic_write_json

log = logging.getLogger(__name__)

NAME = "colour_reading"
TUBES = ("true", "cells", "widened")
#: pixels per cell of the tiny model's mask grid (64-pixel frames -> 16x16 cells)
CELL_PX = 4
#: frames per clip and clips per step, as the tiny model's training reads them
CLIP_FRAMES, CLIPS_PER_STEP = 8, 2


@dataclass(kw_only=True)
class ColourReadingConfig:
    out: Path = Path("runs/experiments/colour_reading")
    run_dir: Path = Path("runs/experiments/colour_reading")
    world_seed: int = 1  # a design world: this experiment chooses defaults
    videos: int = 200  # 4D training videos the head learns on
    val_videos: int = 60  # validation videos scored
    frames: int = 16
    size: int = 64
    steps: list[int] = field(default_factory=lambda: [150, 1500])
    lrs: list[float] = field(default_factory=lambda: [0.001, 0.01])  # the head's learning rate
    seed: int = 0
    # a checkpoint trained on the design world (``data``: its dataset folder): its own head and encoder
    # are read, every field scored, nothing trained
    ckpt: Path | None = None
    data: Path | None = None
    quick: bool = False

    def __post_init__(self) -> None:
        if self.quick:
            self.videos, self.val_videos, self.frames, self.size, self.steps = 6, 3, 6, 32, [2, 4]
            self.lrs = self.lrs[:1]
        if self.world_seed not in DESIGN_WORLDS and not self.quick:
            raise ConfigError(f"--world-seed {self.world_seed}: this experiment chooses defaults, so it runs on a "
                              f"design world ({DESIGN_WORLDS}), never on one that judges")
        if not self.steps or any(s < 1 for s in self.steps):
            raise ConfigError(f"--steps must be positive, got {self.steps}")
        if not self.lrs or any(not (0 < lr < 1) for lr in self.lrs):
            raise ConfigError(f"--lr must be in (0, 1), got {self.lrs}")
        if self.videos < 1 or self.val_videos < 1:
            raise ConfigError("--videos and --val-videos must be positive")
        if (self.ckpt is None) != (self.data is None):
            raise ConfigError("--ckpt and --data go together (a checkpoint and the dataset folder of its design world)")


def _clips(reader, split: str, limit: int, size: int, vocab_index: dict[str, int] | None):
    """``(rgb [V, T, 3, S, S], semantic [V, T, S, S] or None, graphs, frame indices)`` of a split's first videos."""
    from psg4d.model.batching import resample_indices, semantic_target, video_tensors

    rgbs, sems, graphs, idxs = [], [], [], []
    for vid in reader.video_ids(split)[:limit]:
        sample = reader.read(vid)
        idx = resample_indices(sample.video.num_frames, CLIP_FRAMES)
        rgbs.append(video_tensors(sample.video, idx, size)[0])
        if vocab_index is not None:
            sems.append(semantic_target(sample.graph, idx, size, vocab_index))
        graphs.append(sample.graph)
        idxs.append(idx)
    return torch.stack(rgbs), (torch.stack(sems) if sems else None), graphs, idxs


def _train_head(rgb: torch.Tensor, semantic: torch.Tensor, table: torch.Tensor, steps: int, lr: float, seed: int):
    """The attribute head trained ``steps`` steps on the clips at ``lr``, with the tiny preset's optimizer
    and schedule."""
    from psg4d.config import load_yaml
    from psg4d.data.synth.describe import attribute_values
    from psg4d.engine.optim import make_optimizer, make_scheduler
    from psg4d.model.attributes import AttributeHead, attribute_loss
    from psg4d.train.stages import PRESET_DIR

    tr = load_yaml(PRESET_DIR / TINY_PRESET)["train"]
    torch.manual_seed(seed)
    head = AttributeHead(dim=1, values=attribute_values())
    opt = make_optimizer(tr.get("optimizer", "adamw"), [{"params": list(head.parameters())}], lr=lr,
                         betas=tuple(tr.get("betas", (0.9, 0.999))), weight_decay=float(tr.get("weight_decay", 0.0)))
    sched = make_scheduler(opt, shape=tr.get("scheduler", "cosine"), warmup_steps=int(tr.get("warmup_steps", 0)),
                           min_lr_ratio=float(tr.get("min_lr_ratio", 0.0)), total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    v, t = rgb.shape[:2]
    grid = rgb.shape[-1] // CELL_PX
    for _ in range(steps):
        pick = torch.randint(0, v, (CLIPS_PER_STEP,), generator=gen)
        x = rgb[pick].flatten(0, 1)  # [B*T, 3, S, S]
        loss = attribute_loss(head(torch.zeros(x.shape[0], 1, grid, grid), x), semantic[pick].flatten(0, 1), table)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), float(tr.get("max_grad_norm", 1.0)))
        opt.step()
        sched.step()
    return head.eval()


def tube_variants(masks: torch.Tensor, cell: int = CELL_PX) -> dict[str, torch.Tensor]:
    """``masks [N, T, S, S]`` (bool) -> the :data:`TUBES`: true, cut to ``cell``-pixel cells (in when half
    of the cell is), and those cells widened by one cell in every frame."""
    n, t, s, _ = masks.shape
    share = F.avg_pool2d(masks.float().flatten(0, 1)[:, None], cell)  # [N*T, 1, S/cell, S/cell]
    cells = (share >= 0.5).float()
    wide = F.max_pool2d(cells, 3, stride=1, padding=1)
    up = lambda c: F.interpolate(c, scale_factor=cell, mode="nearest").view(n, t, s, s) > 0  # noqa: E731
    return {"true": masks, "cells": up(cells), "widened": up(wide)}


def _described(graph, idx: np.ndarray, size: int):
    """``(truths, masks [N, T, S, S])`` of a clip's objects with a world description and a tube that
    shows on frames ``idx`` (truths: their description fields)."""
    from psg4d.data.descriptions import object_description
    from psg4d.data.synth.describe import description_fields

    objs = [(o, f) for o in graph.objects
            if o.tube is not None and (f := description_fields(object_description(o) or "")) is not None]
    if not objs:
        return [], None
    m = torch.from_numpy(np.stack([np.stack([o.tube.frame(int(t)) for t in idx]) for o, _ in objs])).float()
    if m.shape[-1] != size:
        m = F.interpolate(m, size=(size, size), mode="nearest")
    masks = m > 0.5
    keep = masks.flatten(1).any(dim=1)
    return [f for (_, f), k in zip(objs, keep.tolist()) if k], masks[keep]


@torch.inference_mode()
def _score(clips, read, readings: Sequence[str]) -> dict[tuple[str, str], dict[str, Any]]:
    """(reading, tube) -> percent of the described objects whose every field, and all of them, were read
    right. ``clips``: ``(clip key, truths, masks)``; ``read(clip key, tubes, reading)`` -> the readings."""
    from psg4d.data.synth.describe import ATTRIBUTE_FIELDS, description_fields

    keys = (*ATTRIBUTE_FIELDS, "all")
    hits = {(r, tb): dict.fromkeys(keys, 0) for r in readings for tb in TUBES}
    n = 0
    for key, truths, masks in clips:
        n += len(truths)
        for tb, tube in tube_variants(masks).items():
            for r in readings:
                for truth, got in zip(truths, read(key, tube, r)):
                    fields = description_fields(got[0]) if got is not None else None
                    if fields is not None:
                        for f in ATTRIBUTE_FIELDS:
                            hits[(r, tb)][f] += fields[f] == truth[f]
                        hits[(r, tb)]["all"] += fields == truth
    return {k: {f.replace(" ", "_"): round(100.0 * v / max(n, 1), 2) for f, v in h.items()} | {"objects": n}
            for k, h in hits.items()}


def _head_arms(cfg: ColourReadingConfig, reader) -> list[dict[str, Any]]:
    """The head trained alone at every budget, its colour fields scored (no encoder: the form fields
    read a blank map)."""
    from psg4d.data.synth.describe import attribute_values, category_descriptions
    from psg4d.model.attributes import READINGS, attribute_table, read_attributes

    train_ids = reader.video_ids("train")[: cfg.videos]
    vocab = sorted({o.category for vid in train_ids for o in reader.read_graph(vid).objects})
    table = attribute_table(attribute_values(), vocab, {c: [d] for c, d in category_descriptions(vocab).items()})
    log.info("world seed %d: %d training videos, %d categories; reading %d validation videos",
             cfg.world_seed, len(train_ids), len(vocab), cfg.val_videos)
    rgb, semantic, _, _ = _clips(reader, "train", cfg.videos, cfg.size, {c: i for i, c in enumerate(vocab)})
    val_rgb, _, graphs, idxs = _clips(reader, "val", cfg.val_videos, cfg.size, None)
    clips = [(i, *_described(g, idx, cfg.size)) for i, (g, idx) in enumerate(zip(graphs, idxs))]
    clips = [c for c in clips if c[1]]
    grid = cfg.size // CELL_PX
    arms = []
    for steps in cfg.steps:
        for lr in cfg.lrs:
            head = _train_head(rgb, semantic, table, steps, lr, cfg.seed)

            def read(i, tube, reading):
                blank = torch.zeros(val_rgb.shape[1], 1, grid, grid)
                return read_attributes(head, blank, val_rgb[i], tube, reading=reading)

            for (reading, tube), sc in _score(clips, read, READINGS).items():
                arms.append({"steps": steps, "lr": lr, "reading": reading, "tube": tube, "colour": sc["colour"],
                             "pattern_colour": sc["pattern_colour"], "objects": sc["objects"]})
                log.info("%d steps at lr %g, %s reading, %s tube: colour %.1f %%, pattern colour %.1f %% (%d objects)",
                         steps, lr, reading, tube, sc["colour"], sc["pattern_colour"], sc["objects"])
    return arms


def _checkpoint_arms(cfg: ColourReadingConfig) -> list[dict[str, Any]]:
    """A trained checkpoint's head on its own encoder's maps, every field scored; with a form reader also
    the ``geometry`` reading (size and shape measured from the tube's depth, the rest against the ring)."""
    from psg4d.data.readers import open_dataset
    from psg4d.model.attributes import READINGS, read_attributes
    from psg4d.model.batching import frame_intrinsics, resample_indices, video_tensors
    from psg4d.model.form_geometry import measure_tubes
    from psg4d.model.generation import SceneGraphGenerator
    from psg4d.model.psg4d_llm import PSG4DModel

    model = PSG4DModel.from_pretrained(cfg.ckpt).eval()
    if model.attribute_head is None:
        raise ConfigError(f"{cfg.ckpt}: the checkpoint has no attribute head (model.attribute_loss_weight = 0)")
    gen = SceneGraphGenerator(model)
    reader = open_dataset(cfg.data)
    contexts: dict[str, tuple] = {}
    clips = []
    for vid in reader.video_ids("val")[: cfg.val_videos]:
        sample = reader.read(vid)
        ctx = gen.encode_video(sample.video)
        idx = resample_indices(sample.video.num_frames, ctx.num_frames)
        truths, masks = _described(sample.graph, idx, model.config.image_size)
        if truths:
            rgb, depth = video_tensors(sample.video, idx, model.config.image_size)
            contexts[vid] = (ctx.dense, rgb, depth, frame_intrinsics(sample.video, model.config.image_size))
            clips.append((vid, truths, masks))
    log.info("%s: reading %d validation videos of %s", cfg.ckpt, len(clips), cfg.data)

    head = model.attribute_head
    readings = (*READINGS, "geometry", "both") if head.form is not None else READINGS

    def read(vid, tube, reading):
        dense, rgb, depth, k = contexts[vid]
        measured = None
        if reading in ("geometry", "both"):
            if depth is None or k is None:
                raise ConfigError(f"{cfg.data}: video {vid} has no depth or intrinsics to measure its objects' form")
            geometry = measure_tubes(tube, depth[:, 0], k)
            measured = head.form.field_scores(geometry, head.values)
        return read_attributes(head, dense, rgb, tube, model._attribute_table,
                               reading="sum" if reading == "sum" else "contrast", measured=measured,
                               combine="add" if reading == "both" else "replace")

    return [{"reading": r, "tube": tb, **sc} for (r, tb), sc in _score(clips, read, readings).items()]


def _training_seeds(ckpt: Path) -> list[int] | None:
    """``[seed]`` of the training run that wrote ``ckpt`` (the ``experiment.yaml`` of its run folder, a stage's
    ``final`` two levels below it), None where no run folder records one."""
    import yaml

    from psg4d.train.loop import EXPERIMENT_FILE

    for folder in list(Path(ckpt).resolve().parents)[:3]:
        if (folder / EXPERIMENT_FILE).is_file():
            seed = (yaml.safe_load((folder / EXPERIMENT_FILE).read_text(encoding="utf-8")) or {}).get("seed")
            return None if seed is None else [int(seed)]
    return None


def run(cfg: ColourReadingConfig) -> dict[str, Any]:
    from psg4d.data.readers import open_dataset
    from psg4d.model.attributes import CONTRAST_FLOOR, RING_CELLS

    name = NAME if cfg.ckpt is None else f"{NAME}_checkpoint"
    out = check_output_folder(cfg.out, name=name, quick=cfg.quick)
    if cfg.ckpt is None:
        world = synthetic_world(cfg.run_dir / f"world{cfg.world_seed}", train_videos=cfg.videos,
                                val_videos=cfg.val_videos, frames=cfg.frames, size=cfg.size, seed=cfg.world_seed,
                                novel=NOVEL, stamp=cfg.run_dir / f"world{cfg.world_seed}.json", reuse="refuse_other")
        arms = _head_arms(cfg, open_dataset(world / "4d"))
        score, group = "colour", ("steps", "lr", "reading")
    else:
        arms = _checkpoint_arms(cfg)
        score, group = "all", ("reading",)
    means: dict[tuple, list[float]] = {}
    for a in arms:
        means.setdefault(tuple(a[k] for k in group), []).append(a[score])
    # the best mean over the three tubes; ties: fewer steps
    best = max(means, key=lambda k: (round(float(np.mean(means[k])), 2), -k[0] if cfg.ckpt is None else 0))
    result = {
        "design_world_seed": cfg.world_seed,
        "judged": False,
        "training_seeds": [cfg.seed] if cfg.ckpt is None else _training_seeds(cfg.ckpt),
        "scored_on": f"validation split of world {cfg.world_seed} (first {cfg.val_videos} videos)"
                     + ("" if cfg.ckpt is None else f" in {cfg.data}"),
        "checkpoint": None if cfg.ckpt is None else str(cfg.ckpt),
        "arms": arms,
        "chosen": {**dict(zip(group, best)), f"mean_{score}": round(float(np.mean(means[best])), 2),
                   "rule": f"the best mean {score} accuracy over the three tubes"
                           + ("; ties: fewer steps" if cfg.ckpt is None else "")},
        "reading_settings": {"RING_CELLS": RING_CELLS, "CONTRAST_FLOOR": CONTRAST_FLOOR},
        "quick": cfg.quick,
        "machine": machine_info(),
        "config": jsonable(asdict(cfg)),
    }
    atomic_write_json(out / f"{name}.json", result, indent=1)
    _plot(out / f"{name}.svg", arms, score)
    log.info("wrote %s and %s", out / f"{name}.json", out / f"{name}.svg")
    return result


def _plot(path: Path, arms: list[dict[str, Any]], score: str) -> None:
    from psg4d.viz.plots import write_bar_chart

    labels = [(f"{a['steps']} steps, lr {a['lr']:g}, " if "steps" in a else "") + f"{a['reading']}, {a['tube']} tube"
              for a in arms]
    series = ({"colour": [a["colour"] for a in arms], "pattern colour": [a["pattern_colour"] for a in arms]}
              if score == "colour" else {"all fields": [a["all"] for a in arms], "colour": [a["colour"] for a in arms],
                                         "shape": [a["shape"] for a in arms], "size": [a["size"] for a in arms]})
    write_bar_chart(path, labels, series, title=f"attribute head: {score} read right under a tube (design world, "
                    "validation)", unit="%")
