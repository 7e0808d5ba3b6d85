"""Simulate, render, label and write synthetic 4D videos and 2D images.

Every video (and image) is seeded from ``(seed, split, index)``, so the output
does not depend on the number of workers or the order they finish in.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from tqdm import tqdm

from psg4d.config import to_dict
from psg4d.data.descriptions import DESCRIPTION_KEY
from psg4d.data.readers.psg2d import PSGReader, write_psg_image, write_psg_index
from psg4d.data.schema import MaskTube, ObjectTrack, Sample, SceneGraph4D, Video4D
from psg4d.data.synth import preset_gta, preset_hoi
from psg4d.data.synth.describe import category_descriptions, describe_category
from psg4d.data.synth.layouts import LAYOUTS_4D, Layout4D
from psg4d.data.synth.primitives import scene_primitives
from psg4d.data.synth.relations import compute_relations
from psg4d.data.synth.render import render
from psg4d.data.synth.script import ROLE_STUFF, Scene, ScriptOptions
from psg4d.data.synth.world import NOVEL_CATEGORIES, STATIC_PREDICATES, check_novel, graspable, preset_vocabulary
from psg4d.errors import ConfigError
from psg4d.utils.io import atomic_dir, atomic_write_json

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SPLIT_CODE = {"train": 0, "val": 1, "test": 2}
#: the share of the items each split gets (train, val, test): SynthConfig's default
SPLIT_FRACTIONS: tuple[float, float, float] = (0.7, 0.15, 0.15)
KIND_CODE = {"video": 0, "image": 1}


@dataclass(frozen=True, kw_only=True)
class PresetSpec:
    """What one preset's scenes contain, the function that scripts one, and the layout of the
    real dataset it imitates, which its 4D set is written in (a key of ``LAYOUTS_4D``)."""

    min_objects: int  # movable objects (things besides furniture and agents)
    max_objects: int
    fps: float
    build: Callable[[np.random.Generator, ScriptOptions], Scene]
    format_4d: str

    @property
    def layout_4d(self) -> Layout4D:
        return LAYOUTS_4D[self.format_4d]


PRESETS: dict[str, PresetSpec] = {
    "hoi": PresetSpec(min_objects=3, max_objects=5, fps=5.0, build=preset_hoi.build_hoi, format_4d="psg4d-hoi"),
    "gta": PresetSpec(min_objects=2, max_objects=3, fps=5.0, build=preset_gta.build_gta, format_4d="psg4d-gta"),
}
FORMAT_2D = PSGReader.format_name  # every preset's 2D images: the OpenPSG layout


@dataclass(kw_only=True)
class SynthConfig:
    """Size and look of a synthetic dataset."""

    preset: str = "hoi"
    videos: int = 24
    images: int = 200
    frames: int = 16
    size: int = 64
    seed: int = 0
    workers: int = 0  # 0: os.cpu_count()
    camera_motion: bool = True
    rgb_noise: float = 3.0  # std of sensor noise, 8-bit units
    depth_noise: float = 0.002  # relative depth noise per metre of depth
    shadows: bool = True  # hard shadows (contact cues in RGB); about a third of rendering time
    image_frames: int = 8  # frames simulated (not rendered) for a 2D image's motion context
    min_span: int = 2  # shorter runs of a predicate are dropped
    split_fractions: tuple[float, float, float] = SPLIT_FRACTIONS
    # categories shown only in 4D test videos (neither 4D train/val nor 2D images); names, a
    # comma-separated string, or "default" for the preset's NOVEL_CATEGORIES
    novel: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ConfigError(f"unknown preset {self.preset!r}; choose one of {sorted(PRESETS)}")
        self.novel = parse_novel(self.novel, self.preset)
        problem = check_novel(self.preset, self.novel, min_train=PRESETS[self.preset].max_objects)
        if problem:
            raise ConfigError(problem)
        if self.videos < 1:
            # an empty 4d/ folder is not a dataset any command can read
            raise ConfigError(f"--videos must be >= 1 (a 4D dataset needs videos), got {self.videos}")
        if self.images < 0:
            raise ConfigError(f"images must be >= 0, got {self.images}")
        if self.frames < 2:
            raise ConfigError(f"frames must be >= 2, got {self.frames}")
        if not 16 <= self.size <= 1024:
            raise ConfigError(f"size must be between 16 and 1024 pixels, got {self.size}")
        if self.workers < 0:
            raise ConfigError(f"workers must be >= 0, got {self.workers}")
        if len(self.split_fractions) != 3 or any(f < 0 for f in self.split_fractions) or sum(self.split_fractions) <= 0:
            raise ConfigError(f"split_fractions must be three non-negative numbers, got {self.split_fractions}")


def parse_novel(value: str | tuple[str, ...] | list[str] | None, preset: str) -> tuple[str, ...]:
    """Novel category names from a tuple/list or a comma-separated string; "default" (alone) is
    the preset's :data:`~psg4d.data.synth.world.NOVEL_CATEGORIES`."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"novel must be category names, got {value!r}")
    names = tuple(n for n in (" ".join(v.split()) for v in value) if n)
    if names == ("default",):
        return NOVEL_CATEGORIES.get(preset, ())
    return names


def split_counts(n: int, fractions: tuple[float, float, float]) -> dict[str, int]:
    """Items per split; val and test get at least one item each once n >= 3."""
    tot = sum(fractions)
    val = int(round(n * fractions[1] / tot))
    test = int(round(n * fractions[2] / tot))
    if n >= 3:
        val, test = max(val, 1 if fractions[1] > 0 else 0), max(test, 1 if fractions[2] > 0 else 0)
    val, test = min(val, n), min(test, max(n - val, 0))
    return {"train": n - val - test, "val": val, "test": test}


def items_for_splits(
    train: int = 0, val: int = 0, test: int = 0, *, fractions: tuple[float, float, float] = SPLIT_FRACTIONS,
    margin: int = 2,
) -> int:
    """How many items to synthesise so that :func:`split_counts` gives each split at least the
    count asked (its inverse); 0 when nothing is asked.

    Each asked count over its split's share of ``fractions``, rounded up; the largest, plus
    ``margin`` items for split_counts' rounding (grown further in the rare case it is short)."""
    wanted = {"train": train, "val": val, "test": test}
    if min(wanted.values()) < 0:
        raise ConfigError(f"split counts must be >= 0, got {wanted}")
    total = sum(fractions)
    need = []
    for (split, k), share in zip(wanted.items(), fractions):
        if k == 0:
            continue
        if share <= 0:
            raise ConfigError(f"{k} {split} items asked, but split fractions {tuple(fractions)} give {split} none")
        need.append(math.ceil(k / (share / total)))
    if not need:
        return 0
    n = max(need) + margin
    while any(split_counts(n, fractions)[split] < k for split, k in wanted.items()):
        n += 1
    return n


def _rng(config: SynthConfig, kind: str, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([config.seed, KIND_CODE[kind], SPLIT_CODE[split], index])


def _options(config: SynthConfig, kind: str, split: str, index: int, frames: int) -> ScriptOptions:
    spec = PRESETS[config.preset]
    held, novel = preset_vocabulary(config.preset).held_out, config.novel
    force = None
    if kind == "video" and split == "test":
        # test videos take turns: one shows a held-out category (and maybe more of them), the next
        # a novel one (when there are any), the next neither; the forced category cycles
        modes = (["held"] if held else []) + (["novel"] if novel else []) + ["neither"]
        mode, turn = modes[index % len(modes)], index // len(modes)
        if mode == "held":
            cats = graspable(config.preset, held_out_ok=True, novel=novel)
            force = held[turn % len(held)]
        elif mode == "novel":
            cats = graspable(config.preset, held_out_ok=False)
            force = novel[turn % len(novel)]
        else:
            cats = graspable(config.preset, held_out_ok=False, novel=novel)
    elif kind == "video":  # held-out and novel categories never reach 4D train/val
        cats = graspable(config.preset, held_out_ok=False, novel=novel)
    else:  # the 2D images show the held-out categories, never the novel ones
        cats = graspable(config.preset, held_out_ok=True, novel=novel)
    return ScriptOptions(
        num_frames=frames,
        size=config.size,
        camera_motion=config.camera_motion,
        min_objects=spec.min_objects,
        max_objects=spec.max_objects,
        categories=tuple(c.name for c in cats),
        force_category=force,
        fps=spec.fps,
    )


def _objects(scene: Scene, ids: np.ndarray) -> list[ObjectTrack]:
    """One track per entity that is visible in at least one rendered frame, described by its
    category's look (:func:`~psg4d.data.synth.describe.describe_category`)."""
    out = []
    for e in scene.entities:
        m = ids == e.object_id
        if not m.any():
            continue
        out.append(
            ObjectTrack(
                object_id=e.object_id,
                category=e.name,
                is_thing=e.role != ROLE_STUFF,
                tube=MaskTube.from_dense(m),
                attributes={DESCRIPTION_KEY: describe_category(e.name)},
            )
        )
    return out


def _graph(scene: Scene, video_id: str, ids: np.ndarray, relations, categories, predicates, meta: dict) -> SceneGraph4D:
    objects = _objects(scene, ids)
    present = {o.object_id for o in objects}
    rels = [r for r in relations if r.subject_id in present and r.object_id in present]
    F, H, W = ids.shape
    return SceneGraph4D(
        video_id=video_id,
        num_frames=F,
        height=H,
        width=W,
        objects=objects,
        relations=rels,
        object_vocab=list(categories),
        predicate_vocab=list(predicates),
        meta=meta,
    )


def simulate_scene(
    config: SynthConfig, split: str, index: int, *, kind: str = "video"
) -> tuple[Scene, np.random.Generator]:
    """The simulated state (no rendering) of one video or image scene, and its generator."""
    if split not in SPLIT_CODE:
        raise ConfigError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
    rng = _rng(config, kind, split, index)
    frames = config.frames if kind == "video" else config.image_frames
    scene = PRESETS[config.preset].build(rng, _options(config, kind, split, index, frames))
    return scene, rng


def video_id(config: SynthConfig, split: str, index: int) -> str:
    return f"{config.preset}_{split}_{index:05d}"


def simulate_video(config: SynthConfig, split: str, index: int) -> Sample:
    """One RGB-D video with its 4D scene graph, fully determined by (seed, split, index)."""
    return simulate_video_with_state(config, split, index)[0]


def simulate_video_with_state(config: SynthConfig, split: str, index: int) -> tuple[Sample, Scene]:
    """:func:`simulate_video` plus the simulated state its labels were computed from."""
    scene, rng = simulate_scene(config, split, index, kind="video")
    out = render(
        scene_primitives(scene), scene.camera, scene.lighting, rng=rng,
        rgb_noise=config.rgb_noise, depth_noise=config.depth_noise, shadows=config.shadows,
    )  # fmt: skip
    vocab = preset_vocabulary(config.preset, config.novel)
    rels = compute_relations(scene, out.ids, out.depth, predicates=vocab.predicates, min_span=config.min_span)
    vid = video_id(config, split, index)
    meta = {"preset": config.preset, "split": split, "index": index, "seed": config.seed, "source": "psg4d.synth"}
    graph = _graph(scene, vid, out.ids, rels, vocab.all_categories, vocab.predicates, meta)
    video = Video4D(
        rgb=out.rgb, depth=out.depth, intrinsics=scene.camera.intrinsics(), fps=scene.fps, video_id=vid
    )
    return Sample(video=video, graph=graph), scene


def simulate_image(config: SynthConfig, split: str, index: int) -> Sample:
    """One RGB image (no depth) with relations visible in a single frame (static predicates)."""
    scene, rng = simulate_scene(config, split, index, kind="image")
    t = int(rng.integers(scene.num_frames))
    out = render(
        scene_primitives(scene), scene.camera, scene.lighting, frames=np.array([t]), rng=rng,
        rgb_noise=config.rgb_noise, depth_noise=0.0, shadows=config.shadows,
    )  # fmt: skip
    vocab = preset_vocabulary(config.preset, config.novel)
    preds = tuple(p for p in vocab.predicates if p in STATIC_PREDICATES)
    rels = compute_relations(scene, out.ids, out.depth, frames=np.array([t]), predicates=preds, min_span=1)
    vid = f"{config.preset}_img_{split}_{index:06d}"
    meta = {"preset": config.preset, "split": split, "index": index, "seed": config.seed, "frame": t}
    meta["source"] = "psg4d.synth"
    graph = _graph(scene, vid, out.ids, rels, vocab.image_thing_classes + vocab.stuff_classes, preds, meta)
    video = Video4D(rgb=out.rgb, depth=None, intrinsics=scene.camera.intrinsics(), fps=scene.fps, video_id=vid)
    return Sample(video=video, graph=graph)


# --------------------------------------------------------------------------- writing


@dataclass(kw_only=True)
class SynthSummary:
    """What :func:`generate` wrote."""

    out_dir: Path
    videos: dict[str, int]
    images: dict[str, int]
    frames: int
    seconds: float
    predicate_counts: dict[str, int] = field(default_factory=dict)
    category_counts_4d: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("inf")


def _image_id(split: str, index: int) -> int:
    # unique across splits and stable: the split code in the top digits
    return SPLIT_CODE[split] * 10_000_000 + index


def _job(args: tuple[SynthConfig, str, str, int, str]) -> dict[str, Any]:
    config, kind, split, index, root = args
    vocab = preset_vocabulary(config.preset, config.novel)
    if kind == "video":
        s = simulate_video(config, split, index)
        entry = PRESETS[config.preset].layout_4d.write_video(Path(root) / "4d", s, vocab)
        preds = [r.predicate for r in s.graph.relations]
    else:
        s = simulate_image(config, split, index)
        entry = write_psg_image(
            Path(root) / "2d", s, image_id=_image_id(split, index),
            thing_classes=list(vocab.image_thing_classes), stuff_classes=list(vocab.stuff_classes),
            predicate_classes=list(vocab.predicates),
        )  # fmt: skip
        preds = [r.predicate for r in s.graph.relations]
    return {
        "kind": kind,
        "split": split,
        "index": index,
        "id": s.graph.video_id if kind == "video" else str(_image_id(split, index)),
        "entry": entry,
        "categories": sorted({o.category for o in s.graph.objects}),
        "predicates": preds,
        "frames": s.video.num_frames,
    }


def _tasks(config: SynthConfig, root: str) -> Iterator[tuple[SynthConfig, str, str, int, str]]:
    for kind, n in (("video", config.videos), ("image", config.images)):
        for split, k in split_counts(n, config.split_fractions).items():
            for i in range(k):
                yield (config, kind, split, i, root)


def generate(config: SynthConfig, out_dir: str | Path, *, progress: bool = True) -> SynthSummary:
    """Write ``out_dir/4d`` (the preset's layout: PSG4D-HOI for ``hoi``, PSG4D-GTA for ``gta``),
    ``out_dir/2d`` (OpenPSG layout) and ``out_dir/synth_meta.json``. The folder is built aside and
    renamed into place."""
    out_dir = Path(out_dir)
    vocab = preset_vocabulary(config.preset, config.novel)
    layout = PRESETS[config.preset].layout_4d
    workers = config.workers or os.cpu_count() or 1
    start = time.perf_counter()
    with atomic_dir(out_dir) as tmp:
        tasks = list(_tasks(config, str(tmp)))
        results: list[dict] = []
        bar = tqdm(total=len(tasks), desc=f"synth {config.preset}", unit="item", disable=not progress)
        if workers == 1 or len(tasks) <= 1:
            for t in tasks:
                results.append(_job(t))
                bar.update(1)
        else:
            with ProcessPoolExecutor(max_workers=workers) as ex:
                for r in ex.map(_job, tasks, chunksize=max(1, min(8, len(tasks) // (workers * 4)))):
                    results.append(r)
                    bar.update(1)
        bar.close()
        vids = [r for r in results if r["kind"] == "video"]
        imgs = [r for r in results if r["kind"] == "image"]
        (tmp / "4d").mkdir(exist_ok=True)
        layout.write_index(
            tmp / "4d", [r["entry"] for r in vids], vocab, {s: [r["id"] for r in vids if r["split"] == s] for s in SPLITS}
        )
        (tmp / "2d").mkdir(exist_ok=True)
        write_psg_index(
            tmp / "2d", [r["entry"] for r in imgs], thing_classes=list(vocab.image_thing_classes),
            stuff_classes=list(vocab.stuff_classes), predicate_classes=list(vocab.predicates),
            splits={s: [r["id"] for r in imgs if r["split"] == s] for s in SPLITS},
        )  # fmt: skip
        pred_counts = Counter(p for r in vids for p in r["predicates"])
        cat_counts = {
            s: dict(sorted(Counter(c for r in vids if r["split"] == s for c in r["categories"]).items())) for s in SPLITS
        }
        meta = {
            "generator": "psg4d.data.synth",
            "config": to_dict(config) | {"workers": None},
            "preset": config.preset,
            "format_4d": layout.format,  # what open_dataset(out_dir / "4d") detects
            "format_2d": FORMAT_2D,
            "seed": config.seed,
            "size": [config.size, config.size],
            "frames": config.frames,
            "categories": list(vocab.all_categories),
            "categories_4d_train": list(vocab.train_categories),
            "thing_classes": list(vocab.thing_classes),
            "stuff_classes": list(vocab.stuff_classes),
            "predicates": list(vocab.predicates),
            "image_predicates": [p for p in vocab.predicates if p in STATIC_PREDICATES],
            "held_out_categories": list(vocab.held_out),  # seen in the 2D images and 4D test only
            "novel_categories": list(vocab.novel),  # seen in 4D test only
            "image_thing_classes": list(vocab.image_thing_classes),
            "descriptions": category_descriptions(vocab.all_categories),
            "videos": {s: sum(r["split"] == s for r in vids) for s in SPLITS},
            "images": {s: sum(r["split"] == s for r in imgs) for s in SPLITS},
            "relation_counts_4d": dict(sorted(pred_counts.items())),
            "category_video_counts_4d": cat_counts,
        }
        atomic_write_json(tmp / "synth_meta.json", meta, indent=1)
    seconds = time.perf_counter() - start
    n_frames = sum(r["frames"] for r in results)
    log.info("wrote %d videos and %d images (%d frames) to %s in %.1fs", len(vids), len(imgs), n_frames, out_dir, seconds)
    return SynthSummary(
        out_dir=out_dir,
        videos=meta["videos"],
        images=meta["images"],
        frames=n_frames,
        seconds=seconds,
        predicate_counts=dict(pred_counts),
        category_counts_4d=cat_counts,
    )
