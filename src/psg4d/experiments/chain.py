"""Experiment ``chain``: chained vs direct inference, and what a pretrained LLM's language knowledge adds.

    psg4d experiment chain [--llms tiny smollm2-135m] [--quick] [--out runs/experiments/chain]

One synthetic HOI world in which some categories are **novel** (in no training data at all: never
in a 4D training video, never in a 2D image; shown in 4D test videos) and some are **seen only in
2D** (the world's held-out categories: in the 2D images and the 4D test videos only). The tiny
model is trained through the 2D-to-4D transfer stages (``4d_init`` -> ``estimator_fit`` ->
``pseudo4d_init`` -> ``transfer_2d`` -> ``finetune_4d``) with ``model.chain_prob`` of its samples
written as the chained steps and the rest as the direct grammar, so the same checkpoint predicts
both ways. The pretrained SmolLM2-135M then learns on the tiny model's trained vision (encoder,
estimators and segmentation head frozen; projector, LoRA, ``[Obj]`` projection and mask decoder
trained) in one ``finetune_4d`` stage on the same mix: its steps cost twenty tiny ones on 2 CPU
cores, and sharing the vision compares the two LLMs, not two vision models. On the same 4D test
videos:

* ``direct`` — one scene-graph text (:class:`~psg4d.infer.predictor.Predictor`);
* ``chain`` — the four chained turns (:class:`~psg4d.infer.chain.ChainPredictor`); an object whose
  description training never saw is named by the LLM's language knowledge (``naming``:
  ``vocabulary`` scores the dataset's class names training never used, ``free`` writes a name
  that the label mapper :mod:`psg4d.eval.automap` maps to the vocabulary at scoring). The turns
  are generated once; the ``free`` record renames those objects from their descriptions.

Predictions are scored through the label mapper (``--label-map auto``): R/mR@20/50/100 under both
protocols; ``zR@50_novel`` is pvsg R@50 on the test relations with a novel subject or object,
``recall@50_seen_only_in_2d`` the same on those with a seen-only-in-2D one; ``mapper_accuracy`` is,
over predicted objects named by language (matched to a ground-truth object: tube vIoU >= 0.5), how
often the mapped name is the ground truth's class; ``novel_named_as`` lists what each novel
category's matched objects were called. Validation is off: every setting is fixed in advance, the test split is only
scored.

Writes ``OUT/chain.json``: a list of records (``mode``, ``llm``, ``naming``, ``metrics``
{protocol: R/mR@K}, ``zR@50_novel``, ``recall@50_seen_only_in_2d``, ``mapper_accuracy``,
``wall_s`` (training), ``predict_s_per_video``, ...), and ``OUT/chain.svg`` (R@50 per arm).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from psg4d.errors import ConfigError
from psg4d.experiments.common import (
    FROM_SCRATCH,
    QUICK_MAX_NEW_TOKENS,
    held_out_graphs,
    predict_videos,
    protocol_metrics,
    synthetic_world,
    train_or_reuse,
)
from psg4d.experiments.output import check_output_folder, write_results
from psg4d.utils.io import atomic_write_json

log = logging.getLogger(__name__)

NAME = "chain"
STAGE_ORDER = ("4d_init", "estimator_fit", "pseudo4d_init", "transfer_2d", "finetune_4d")
LLM_PRESETS = {"tiny": "hoi_tiny.yaml", "smollm2-135m": "hoi_smollm2.yaml"}
# Novel categories whose descriptions name them in everyday words (the language test), and one whose
# description does not (an orange cylinder with white checks: a jar only by convention).
NOVEL = ("apple", "phone", "globe", "jar")


@dataclass(kw_only=True)
class ChainExperimentConfig:
    out: Path = Path("runs/experiments/chain")  # the shipped results: --out bench/results
    run_dir: Path = Path("runs/experiments/chain")
    llms: list[str] = field(default_factory=lambda: ["tiny", "smollm2-135m"])
    novel: tuple[str, ...] = NOVEL
    videos: int = 200  # 4D training videos
    images: int = 800  # 2D training images
    test_videos: int = 30  # scored: the first N of the world's test split
    # the world's test split is sized for this many videos whatever --test-videos scores, so that
    # scoring fewer (a slow pretrained LLM) reuses the world and the trained runs
    world_test_videos: int = 60
    frames: int = 16
    size: int = 64
    seed: int = 1
    chain_prob: float = 0.5
    # how the chain names an object of an unseen description: "free" (the LLM writes a name; the
    # mapper maps it), "vocabulary" (the LLM scores the dataset's names training never used)
    namings: list[str] = field(default_factory=lambda: ["free", "vocabulary"])
    # optimizer steps of the tiny model's five stages
    steps: dict[str, int] = field(default_factory=lambda: {
        "4d_init": 900, "estimator_fit": 150, "pseudo4d_init": 100, "transfer_2d": 500, "finetune_4d": 200,
    })
    # steps of a pretrained LLM's one stage on the tiny model's trained vision (about ten CPU-seconds
    # a step on 2 cores for SmolLM2-135M, against half a second for the tiny model)
    llm_steps: int = 300
    batch_size: dict[str, int] = field(default_factory=lambda: {"tiny": 2, "smollm2-135m": 2})
    quick: bool = False

    def __post_init__(self) -> None:
        if self.quick:
            self.videos, self.images, self.test_videos, self.frames, self.size = 8, 12, 3, 6, 32
            self.world_test_videos = 3
            self.steps, self.llm_steps = {s: 2 for s in STAGE_ORDER}, 2
        unknown = [m for m in self.llms if m not in LLM_PRESETS]
        if unknown or not self.llms:
            raise ConfigError(f"--llms: choose from {sorted(LLM_PRESETS)}, got {self.llms}")
        bad = [n for n in self.namings if n not in ("vocabulary", "free")]
        if bad or not self.namings:
            raise ConfigError(f"namings must be 'vocabulary' and/or 'free', got {self.namings}")
        if self.videos < 1 or self.images < 1 or self.test_videos < 1:
            raise ConfigError("--videos, --images and --test-videos must be positive")


def _world(cfg: ChainExperimentConfig) -> Path:
    """The world in ``RUN_DIR/data`` (reused when its settings match; one made with other settings is
    refused, never replaced), its settings in ``RUN_DIR/synth_config.json``."""
    return synthetic_world(cfg.run_dir / "data", train_videos=cfg.videos,
                           test_videos=max(cfg.test_videos, cfg.world_test_videos), train_images=cfg.images,
                           frames=cfg.frames, size=cfg.size, seed=cfg.seed, novel=cfg.novel,
                           stamp=cfg.run_dir / "synth_config.json", reuse="refuse_other")


def _experiment(cfg: ChainExperimentConfig, world: Path, llm: str, out: Path, vision: Path | None = None):
    """The training run of one LLM: the tiny model through the five transfer stages; a pretrained
    LLM in one ``finetune_4d`` stage (4D videos and lifted 2D images) started from ``vision``
    (:func:`_vision_init`: the tiny run's encoder, estimators and mask decoder, kept frozen but
    the decoder), so the two LLMs are compared on the same vision."""
    from psg4d.config import load_yaml, merge_dicts
    from psg4d.train.stages import PRESET_DIR
    from psg4d.train.stages import experiment_from_data

    data = load_yaml(PRESET_DIR / LLM_PRESETS[llm])
    if "_base_" in data:  # the smollm2 preset is written over the tiny one
        data = merge_dicts(load_yaml(PRESET_DIR / data.pop("_base_")), data)
    if llm != "tiny":  # the tiny model's settings (its vision is reused) with this LLM
        from psg4d.train.stages import resolve_model_preset

        tiny = resolve_model_preset(dict(load_yaml(PRESET_DIR / LLM_PRESETS["tiny"])["model"]))
        data["model"] = {**tiny, "preset": llm, "llm": resolve_model_preset({"preset": llm})["llm"]}
    lifted = {"path": "2d", "split": "train", "lift_2d": True, "max_videos": cfg.images}
    real = {"path": "4d", "split": "train", "max_videos": cfg.videos}
    stages = []
    if llm == "tiny":
        for i, kind in enumerate(STAGE_ORDER):
            stage: dict[str, Any] = {"name": kind, "kind": kind, "max_steps": cfg.steps[kind]}
            if i:
                stage["init"] = "previous"
            if kind == "4d_init":  # the tiny parts learn from scratch here
                stage["trainable"] = list(FROM_SCRATCH)
            if kind == "transfer_2d":
                stage["data"] = [lifted]
            if kind == "finetune_4d":
                stage["data"] = [{**real, "weight": 1.0}, {**lifted, "weight": 0.5}]
            stages.append(stage)
    else:
        stages.append({"name": "llm_on_tiny_vision", "kind": "finetune_4d", "max_steps": cfg.llm_steps,
                       "init": str(vision) if vision is not None else None,
                       "trainable": ["projector", "llm", "obj_proj", "mask_decoder", "tag_head", "obj_cls_head"],
                       "data": [{**real, "weight": 1.0}, {**lifted, "weight": 0.5}], "lr": {"llm": 1.0e-4}})
    data["model"] = dict(data["model"], chain_prob=cfg.chain_prob)
    if cfg.quick:
        data["model"]["chain_step_tokens"] = QUICK_MAX_NEW_TOKENS
    data["data"] = {"root": str(world.resolve()), "train": [real], "val": []}
    data["train"] = dict(data.get("train") or {}, val_every=0, save_every=0, progress=False,
                         log_every=50, batch_size=cfg.batch_size[llm], device="cpu", amp="off", num_threads=2)
    data["stages"] = stages
    data["output_dir"] = str(out)
    data["seed"] = cfg.seed
    return experiment_from_data(data, where=f"{NAME} experiment ({llm})")


VISION_MODULES = ("encoder.", "estimators.", "mask_decoder.", "seg_head.")


def _vision_init(exp, tiny_ckpt: Path, out: Path) -> Path:
    """A checkpoint of ``exp``'s model (its first stage's config) holding the tiny run's trained
    vision (:data:`VISION_MODULES`) and its own fresh projector, LLM and heads; reused when written."""
    import torch

    from psg4d.model.psg4d_llm import PSG4DModel
    from psg4d.train.data import with_data_vocab

    if (out / "model.safetensors").exists():
        return out
    exp = with_data_vocab(exp)
    torch.manual_seed(exp.seed)
    model = PSG4DModel.from_config(exp.model_config_for(exp.stages[0]))
    tiny = PSG4DModel.from_pretrained(tiny_ckpt).state_dict()
    own = model.state_dict()
    moved = {k: v for k, v in tiny.items() if k.startswith(VISION_MODULES) and k in own and own[k].shape == v.shape}
    missing = [k for k in own if k.startswith(VISION_MODULES) and k not in moved]
    if missing:
        raise ConfigError(f"{tiny_ckpt}: its vision does not fit the {exp.model.preset} model ({missing[:3]} ...)")
    model.load_state_dict(moved, strict=False)
    model.save_pretrained(out)
    return out


# ------------------------------------------------------------------------ scoring
def _naming_report(preds: list, gts: list, label_map, novel: set[str]) -> tuple[float | None, dict, int]:
    """(mapper accuracy over language-named objects matched to a GT object, what each novel GT
    category's matched objects were called, how many language-named objects were matched)."""
    from psg4d.data.masks import rle_tube_viou

    hits = total = 0
    names: dict[str, Counter] = {c: Counter() for c in sorted(novel)}
    for p, g in zip(preds, gts):
        for go in g.objects:
            if go.tube is None:
                continue
            best, best_v = None, 0.5
            for po in p.objects:
                if po.tube is None:
                    continue
                v = rle_tube_viou(po.tube.rles, go.tube.rles)  # two empty tubes: 0, no match (as in psg4d.eval)
                if v >= best_v:
                    best, best_v = po, v
            if best is None:
                continue
            if go.category in names:
                names[go.category][str(best.category)] += 1
            if str(best.attributes.get("category_source", "")).startswith("language"):
                total += 1
                hits += label_map.object(best.category) == go.category
    return (round(100.0 * hits / total, 2) if total else None), {c: dict(n) for c, n in names.items()}, total


def _predict(model, world: Path, cfg: ChainExperimentConfig, mode: str, vocab: list[str]):
    """The test videos predicted ``mode``'s way (:class:`~psg4d.experiments.common.PredictedVideos`)."""
    from psg4d.infer.predictor_factory import build_predictor
    from psg4d.infer.predictor import PredictorConfig

    pcfg = PredictorConfig(mode=mode, vocabulary=vocab if mode == "chain" else None,
                           max_new_tokens=QUICK_MAX_NEW_TOKENS if cfg.quick else None)
    return predict_videos(build_predictor(model, pcfg), world / "4d", limit=cfg.test_videos)


def renamed_free(model, preds: list) -> list:
    """Copies of chain predictions whose language-named objects are named in free text instead of
    from the vocabulary: the turns are the same, only that last naming differs, so it is redone
    from each object's description rather than predicting again."""
    import copy

    from psg4d.infer.categorise import LanguageCategoriser

    namer = LanguageCategoriser(llm=model.llm, tokenizer=model.tokenizer,
                                examples=model.config.category_descriptions, vocabulary=None,
                                known=model.config.object_vocab)
    out = []
    for p in preds:
        q = copy.copy(p)
        q.objects = []
        for o in p.objects:
            o = copy.copy(o)
            if str(o.attributes.get("category_source", "")).startswith("language"):
                o.attributes = dict(o.attributes, vocabulary_name=o.category,
                                    category_source=o.attributes["category_source"].replace("vocabulary", "free"))
                o.category = namer(o.attributes.get("description") or o.category).name or o.category
            q.objects.append(o)
        out.append(q)
    return out


def _score(preds: list, gts: list, vocab: list[str], predicates: list[str], groups: dict[str, set[str]]):
    from psg4d.eval import evaluate
    from psg4d.eval.automap import auto_label_map

    label_map, mapping = auto_label_map(
        object_labels=[o.category for p in preds for o in p.objects],
        predicate_labels=[r.predicate for p in preds for r in p.relations],
        objects=vocab, predicates=predicates)
    metrics = protocol_metrics(preds, gts, label_map=label_map, graph_constraint=True)
    subset: dict[str, Any] = {}
    for name, cats in groups.items():
        sub = held_out_graphs(gts, cats)
        n = sum(len(g.relations) for g in sub)
        r50 = evaluate(preds, {g.video_id: g for g in sub}, protocol="pvsg", label_map=label_map)["R@50"] if n else None
        subset[name] = (None if r50 is None else round(float(r50), 2), n)
    accuracy, names, n_named = _naming_report(preds, gts, label_map, groups["novel"])
    problems = sum(int(p.meta.get("chain", {}).get("problems", 0)) for p in preds)
    return {
        "metrics": metrics,
        "zR@50_novel": subset["novel"][0], "novel_relations": subset["novel"][1],
        "recall@50_seen_only_in_2d": subset["seen_only_in_2d"][0],
        "seen_only_in_2d_relations": subset["seen_only_in_2d"][1],
        "mapper_accuracy": accuracy, "language_named_objects": n_named, "novel_named_as": names,
        "label_mapping": mapping, "chain_problems": problems,
    }


def run(cfg: ChainExperimentConfig) -> list[dict[str, Any]]:
    from psg4d.data.readers import open_dataset
    from psg4d.data.schema import save_scene_graphs
    from psg4d.data.synth.world import preset_vocabulary
    from psg4d.model.psg4d_llm import PSG4DModel

    out = check_output_folder(cfg.out, name=NAME, quick=cfg.quick)
    world = _world(cfg)
    predicates = list(open_dataset(world / "4d").predicate_vocab)
    voc = preset_vocabulary("hoi")
    vocab = list(voc.all_categories)
    groups = {"novel": set(cfg.novel), "seen_only_in_2d": set(voc.held_out) - set(cfg.novel)}
    log.info("novel: %s; seen only in 2D: %s", sorted(groups["novel"]), sorted(groups["seen_only_in_2d"]))
    records: list[dict[str, Any]] = []
    tiny = train_or_reuse(_experiment(cfg, world, "tiny", cfg.run_dir / "tiny"), cfg.run_dir / "tiny")
    for llm in cfg.llms:
        run_out = cfg.run_dir / llm
        trained = tiny
        if llm != "tiny":
            vision = _vision_init(_experiment(cfg, world, llm, run_out), tiny.final_dir, cfg.run_dir / f"{llm}_init")
            trained = train_or_reuse(_experiment(cfg, world, llm, run_out, vision), run_out)
        ckpt, wall = trained.final_dir, trained.wall_s
        model = PSG4DModel.from_pretrained(ckpt)
        arms = []
        for mode in ("direct", "chain"):
            done = _predict(model, world, cfg, mode, vocab)
            preds, gts, seconds = done.predictions, done.truths, done.predict_s_per_video
            # kept beside the runs: a person can read the chains, `psg4d eval` can score them again
            (cfg.run_dir / "predictions").mkdir(parents=True, exist_ok=True)
            save_scene_graphs(cfg.run_dir / "predictions" / f"{llm}_{mode}.jsonl", preds)
            if mode == "direct":
                arms.append((mode, None, preds, seconds))
                continue
            variants = {"vocabulary": preds, "free": renamed_free(model, preds) if "free" in cfg.namings else None}
            arms += [(mode, n, variants[n], seconds) for n in cfg.namings]
        for mode, naming, preds, seconds in arms:
            scored = _score(preds, gts, vocab, predicates, groups)
            records.append({"mode": mode, "llm": llm, "naming": naming, **scored, "wall_s": round(wall, 1),
                            "predict_s_per_video": round(seconds, 3), "test_videos": len(gts),
                            "steps": sum(cfg.steps.values()) if llm == "tiny" else cfg.llm_steps,
                            "novel_categories": sorted(groups["novel"]),
                            "seen_only_in_2d_categories": sorted(groups["seen_only_in_2d"])})
            log.info("%s %s (%s): pvsg R@50 %.2f, zR@50 novel %s, seen-only-in-2D R@50 %s, mapper %s", llm, mode,
                     naming, scored["metrics"]["pvsg"].get("R@50", float("nan")), scored["zR@50_novel"],
                     scored["recall@50_seen_only_in_2d"], scored["mapper_accuracy"])
            atomic_write_json(out / f"{NAME}.json", records, indent=1)  # a long run keeps what it has
    write_results(out, NAME, records, cfg, _plot)
    return records


def _plot(path: Path, records: list[dict[str, Any]]) -> None:
    from psg4d.viz.plots import write_bar_chart

    labels = [f"{r['llm']} {r['mode']}{' (' + r['naming'] + ')' if r['naming'] else ''}" for r in records]
    series = {"R@50": [r["metrics"]["pvsg"].get("R@50") or 0.0 for r in records],
              "zR@50 novel": [r["zR@50_novel"] or 0.0 for r in records],
              "R@50 seen only in 2D": [r["recall@50_seen_only_in_2d"] or 0.0 for r in records]}
    write_bar_chart(path, labels, series, title="chained vs direct inference (pvsg protocol)", unit="%")
