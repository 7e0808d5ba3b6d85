"""Experiment ``chain``: chained vs direct inference, and what a pretrained LLM's language knowledge adds.

    psg4d experiment chain [--llms tiny --llms smollm2-135m] [--world-seed 29] [--seeds 0 --seeds 1 ...]
                           [--device cpu|cuda] [--quick] [--out runs/experiments/chain]

Under the fair protocol (BENCHMARKS.md): one synthetic HOI world of a seed never used for design
(``--world-seed``; a design world is refused, except with ``--design``: a run that informs the design
on a design world, judges nothing, and whose JSON names ``design_world_seed`` instead of
``judged_on_world_seed``), every run trained once per training seed
(``--seeds``), mean ± std over the seeds; direct and chain share each run's checkpoint, so their
budgets are equal. In the world some categories are **novel** (in no training data at all: never
in a 4D training video, never in a 2D image; shown in 4D test videos) and some are **seen only in
2D** (the world's held-out categories: in the 2D images and the 4D test videos only). The tiny
model is trained through the 2D-to-4D transfer stages (``4d_init`` -> ``estimator_fit`` ->
``pseudo4d_init`` -> ``transfer_2d`` -> ``finetune_4d``) with ``model.chain_prob`` of its samples
written as the chained steps and the rest as the direct grammar, so the same checkpoint predicts
both ways, then ``attribute_fit`` fits the attribute head (:mod:`psg4d.model.attributes`) on its
frozen encoder. The pretrained SmolLM2-135M then learns on the tiny model's trained vision
(encoder, estimators, segmentation and attribute heads frozen; projector, LoRA, ``[Obj]``
projection and mask decoder trained) in one ``finetune_4d`` stage on the same mix: its steps cost
twenty tiny ones on 2 CPU cores, and sharing the vision compares the two LLMs, not two vision
models. On the same 4D test videos:

* ``direct`` — one scene-graph text (:class:`~psg4d.infer.predictor.Predictor`);
* ``chain`` — the four chained turns, each decoded under its grammar
  (:class:`~psg4d.infer.chain.ChainPredictor`); an object whose appearance the frames read as a
  description training never connected to a category (the unknown object), or whose written
  description training never saw, is named by the LLM's language knowledge (``naming``:
  ``vocabulary`` scores every name of the dataset's vocabulary, chance ``1 / len(vocabulary)``;
  ``free`` writes a name that the label mapper :mod:`psg4d.eval.automap` maps to the vocabulary at
  scoring). The turns are generated once; the ``free`` record renames those objects from their
  descriptions.

Predictions are scored through the label mapper (``--label-map auto``): R/mR@20/50/100 under both
protocols; ``zR@50_novel`` is pvsg R@50 on the test relations with a novel subject or object,
``recall@50_seen_only_in_2d`` the same on those with a seen-only-in-2D one; ``mapper_accuracy`` is,
over predicted objects named by language (matched to a ground-truth object: tube vIoU >= 0.5), how
often the mapped name is the ground truth's class; ``novel_named_as`` lists what each novel
category's matched objects were called; ``turns_at_limit`` counts chained turns cut by their token
budget; ``naming_probe`` names each novel category from its world description alone over the whole
vocabulary (accuracy beside chance). With ``--namer gemma3-270m`` one more chain arm, ``vocabulary by
gemma3-270m``, names the same predictions' language-named objects with that pretrained LM (what
``psg4d predict --mode chain --namer`` does), for an LLM trained from scratch, which knows no words.
Before the test videos, ``psg4d tune-ranking`` runs on the world's validation split for each
trained model: the direct and the chained predictors' ranking weights (each its own), the chain's
unknown-object margin (:mod:`psg4d.infer.chain_naming`) and ``--mode auto``'s choice, recorded in
``runs[].chosen_on_validation``. With an attribute head, the arm ``vocabulary, no unknown objects``
is the same predictions named as ``PredictorConfig(unknown_objects=False)`` names them (the
attribute head's reading recorded, not deciding), and ``vocabulary, margin 0`` as the gate with
no margin (any reading no training category has): what the unknown-object outcome, and its
margin, cost or buy. Everything else is fixed in advance (the JSON's ``defaults_chosen_on``); the
test split is only scored.

Writes ``OUT/chain.json``: ``judged_on_world_seed``, ``training_seeds``, ``naming_chance``,
``summary`` (per arm: mean ± std over the seeds), ``runs`` (one record per LLM, seed, mode and
naming: ``metrics`` {protocol: R/mR@K}, ``zR@50_novel``, ``recall@50_seen_only_in_2d``,
``mapper_accuracy``, ``turns_at_limit``, ``naming_probe``, ``wall_s`` (training),
``predict_s_per_video``, ...), and ``OUT/chain.svg`` (R@50 per arm).
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from psg4d.errors import ConfigError
from psg4d.experiments.common import (
    DESIGN_WORLDS,
    FROM_SCRATCH,
    QUICK_MAX_NEW_TOKENS,
    predict_videos,
    synthetic_world,
    train_or_reuse,
)
from psg4d.experiments.chain_config import LLM_PRESETS, STAGE_ORDER, ChainExperimentConfig
from psg4d.experiments.chain_scoring import (
    namer_for,
    naming_probe,
    plot_summary,
    renamed,
    score_arm,
    summarise,
    without_unknown_objects,
)
from psg4d.experiments.output import check_output_folder, jsonable, machine_info
from psg4d.utils.io import atomic_write_json

if TYPE_CHECKING:
    from psg4d.experiments.common import TrainedRun

log = logging.getLogger(__name__)

NAME = "chain"
def _world(cfg: ChainExperimentConfig) -> Path:
    """The world in ``RUN_DIR/world<seed>`` (reused when its settings match; one made with other
    settings is refused, never replaced), its settings in ``RUN_DIR/world<seed>.json``."""
    return synthetic_world(cfg.run_dir / f"world{cfg.world_seed}", train_videos=cfg.videos,
                           test_videos=max(cfg.test_videos, cfg.world_test_videos), train_images=cfg.images,
                           frames=cfg.frames, size=cfg.size, seed=cfg.world_seed, novel=cfg.novel,
                           stamp=cfg.run_dir / f"world{cfg.world_seed}.json", reuse="refuse_other")


def _experiment(cfg: ChainExperimentConfig, world: Path, llm: str, out: Path, seed: int, vision: Path | None = None):
    """The training run of one LLM: the tiny model through the five transfer stages and attribute_fit; a pretrained
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
        # the tiny run's attribute head comes with its vision (frozen)
        data["model"] = {**tiny, "preset": llm, "llm": resolve_model_preset({"preset": llm})["llm"],
                         "attribute_loss_weight": 1.0}
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
            if kind == "attribute_fit":
                stage["lr"] = {"attribute_head": cfg.attribute_lr}
                if cfg.attribute_form != "map":
                    stage["lr"]["attribute_head.form"] = cfg.form_lr
            stages.append(stage)
    else:
        stages.append({"name": "llm_on_tiny_vision", "kind": "finetune_4d", "max_steps": cfg.llm_steps,
                       "init": str(vision) if vision is not None else None,
                       "trainable": ["projector", "llm", "obj_proj", "mask_decoder", "tag_head", "obj_cls_head"],
                       "data": [{**real, "weight": 1.0}, {**lifted, "weight": 0.5}], "lr": {"llm": 1.0e-4}})
    data["model"] = dict(data["model"], chain_prob=cfg.chain_prob, attribute_form=cfg.attribute_form)
    if cfg.quick:
        data["model"]["chain_step_tokens"] = QUICK_MAX_NEW_TOKENS
    data["data"] = {"root": str(world.resolve()), "train": [real], "val": []}
    data["train"] = dict(data.get("train") or {}, val_every=0, save_every=0, progress=False,
                         log_every=50, batch_size=cfg.batch_size[llm], device=cfg.device, amp="off", num_threads=2)
    data["stages"] = stages
    data["output_dir"] = str(out)
    data["seed"] = seed
    return experiment_from_data(data, where=f"{NAME} experiment ({llm})")


VISION_MODULES = ("encoder.", "estimators.", "mask_decoder.", "seg_head.", "attribute_head.")


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


def _predict(model, world: Path, cfg: ChainExperimentConfig, mode: str, vocab: list[str]):
    """The test videos predicted ``mode``'s way (:class:`~psg4d.experiments.common.PredictedVideos`)."""
    from psg4d.infer.predictor_factory import build_predictor
    from psg4d.infer.predictor import PredictorConfig

    pcfg = PredictorConfig(mode=mode, vocabulary=vocab if mode == "chain" else None,
                           max_new_tokens=QUICK_MAX_NEW_TOKENS if cfg.quick else None)
    return predict_videos(build_predictor(model, pcfg), world / "4d", limit=cfg.test_videos)


def _tuned(ckpt: Path, world: Path, cfg: ChainExperimentConfig, vocab: list[str]) -> dict[str, Any]:
    """``psg4d tune-ranking`` on the world's validation split (its first ``cfg.test_videos``
    videos) for checkpoint ``ckpt``: the direct and the chained predictors' ranking weights, the
    chain's unknown-object margin and ``--mode auto``'s choice, written to ``ckpt/ranking.json``
    (where every predictor of the checkpoint reads them; reused when chosen on the same videos).
    -> what the runs record of it."""
    import json

    from psg4d.data.readers import open_dataset
    from psg4d.infer.predictor import PredictorConfig
    from psg4d.infer.ranking import RANKING_FILE
    from psg4d.tune_ranking import tune_checkpoint

    path = ckpt / RANKING_FILE
    data = world / "4d"
    videos = len(open_dataset(data).video_ids("val")[: cfg.test_videos])
    old = json.loads(path.read_text()) if path.is_file() else {}
    if not (old.get("data") == str(data.resolve()) and old.get("split") == "val"
            and old.get("videos") == videos and "chain_ranking" in old):
        # read as the test videos are: the chain names over the vocabulary, the quick run's token limit
        config = PredictorConfig(vocabulary=vocab, max_new_tokens=QUICK_MAX_NEW_TOKENS if cfg.quick else None)
        tune_checkpoint(ckpt, data, "val", limit=cfg.test_videos, overwrite=True, config=config)
    rec = json.loads(path.read_text())
    return {"direct": {"quality": rec["quality"], "presence": rec["presence"]},
            "chain": {k: rec["chain_ranking"][k] for k in ("quality", "presence")},
            "unknown_margin": rec.get("unknown_margin"), "auto_mode": rec["mode"]["chosen"],
            "chosen_on": f"val split of world {cfg.world_seed} (first {rec['videos']} videos)"}


def _external_namer(cfg: ChainExperimentConfig, model, vocab: list[str], external):
    """The ``vocabulary by <namer>`` arm's namer: ``cfg.namer``'s LM over ``vocab``, scored as
    ``cfg.namer_scoring`` says."""
    return namer_for(model, vocab, external, calibrate=cfg.namer_scoring == "calibrated")


def _trained(cfg: ChainExperimentConfig, world: Path, llm: str, seed: int, tiny: "TrainedRun") -> "TrainedRun":
    """``llm``'s run of training seed ``seed`` (the tiny run itself for ``tiny``)."""
    if llm == "tiny":
        return tiny
    run_out = cfg.run_dir / f"{llm}_seed{seed}"
    vision = _vision_init(_experiment(cfg, world, llm, run_out, seed), tiny.final_dir,
                          cfg.run_dir / f"{llm}_seed{seed}_init")
    return train_or_reuse(_experiment(cfg, world, llm, run_out, seed, vision), run_out)


def _arms(cfg: ChainExperimentConfig, model, world: Path, vocab: list[str], name: str, namer):
    """``(mode, naming, predictions, truths, s/video)`` of every arm of one trained model; the
    predictions are kept in ``RUN_DIR/predictions/NAME_<mode>.jsonl`` (``psg4d eval`` scores them
    again). ``namer``: the ``vocabulary by <cfg.namer>`` arm's namer (:func:`_external_namer`), or None."""
    from psg4d.data.schema import save_scene_graphs
    from psg4d.infer.chain import ChainPredictor
    from psg4d.infer.predictor import PredictorConfig

    arms = []
    tuned = _tuned(model.checkpoint_dir, world, cfg, vocab)
    for mode in ("direct", "chain"):
        done = _predict(model, world, cfg, mode, vocab)
        preds = done.predictions
        (cfg.run_dir / "predictions").mkdir(parents=True, exist_ok=True)
        save_scene_graphs(cfg.run_dir / "predictions" / f"{name}_{mode}.jsonl", preds)
        if mode == "direct":
            arms.append((mode, None, preds, done.truths, done.predict_s_per_video))
            continue
        variants = {"vocabulary": preds,
                    "free": renamed(preds, namer_for(model, None), "free") if "free" in cfg.namings else None}
        arms += [(mode, n, variants[n], done.truths, done.predict_s_per_video) for n in cfg.namings]
        if "vocabulary" in cfg.namings and model.attribute_head is not None:
            # the same predictions without the unknown-object outcome (PredictorConfig.unknown_objects)
            gate_off = ChainPredictor(model=model, config=PredictorConfig(mode="chain", vocabulary=vocab,
                                                                           unknown_objects=False))
            arms.append((mode, "vocabulary, no unknown objects", without_unknown_objects(preds, gate_off),
                         done.truths, done.predict_s_per_video))
            # the gate before a margin was chosen: every reading no training category has is unknown
            eager = ChainPredictor(model=model, config=PredictorConfig(mode="chain", vocabulary=vocab,
                                                                        unknown_margin=0.0))
            arms.append((mode, "vocabulary, margin 0", without_unknown_objects(preds, eager), done.truths,
                         done.predict_s_per_video))
        if namer is not None:
            how = f"vocabulary by {cfg.namer}"
            arms.append((mode, how, renamed(preds, namer, how), done.truths,
                         done.predict_s_per_video))
    return arms, tuned


def run(cfg: ChainExperimentConfig) -> dict[str, Any]:
    from psg4d.data.readers import open_dataset
    from psg4d.data.synth.world import preset_vocabulary
    from psg4d.model.llm import load_language_model
    from psg4d.model.psg4d_llm import PSG4DModel

    out = check_output_folder(cfg.out, name=NAME, quick=cfg.quick)
    world = _world(cfg)
    predicates = list(open_dataset(world / "4d").predicate_vocab)
    voc = preset_vocabulary("hoi")
    vocab = list(voc.all_categories)
    groups = {"novel": set(cfg.novel), "seen_only_in_2d": set(voc.held_out) - set(cfg.novel)}
    log.info("world seed %d; novel: %s; seen only in 2D: %s", cfg.world_seed, sorted(groups["novel"]),
             sorted(groups["seen_only_in_2d"]))
    external = load_language_model(cfg.namer) if cfg.namer else None
    runs: list[dict[str, Any]] = []
    for seed in cfg.seeds:
        tiny = train_or_reuse(_experiment(cfg, world, "tiny", cfg.run_dir / f"tiny_seed{seed}", seed),
                              cfg.run_dir / f"tiny_seed{seed}")
        for llm in cfg.llms:
            trained = _trained(cfg, world, llm, seed, tiny)
            model = PSG4DModel.from_pretrained(trained.final_dir).to(cfg.device)
            novel = sorted(groups["novel"])
            probes = {"vocabulary": naming_probe(namer_for(model, vocab), novel)}
            # one namer for the probe and the arm: its neutral-description scores are computed once
            namer = _external_namer(cfg, model, vocab, external) if external is not None else None
            if namer is not None:
                probes[f"vocabulary by {cfg.namer}"] = naming_probe(namer, novel)
            arms, tuned = _arms(cfg, model, world, vocab, f"{llm}_seed{seed}", namer)
            for mode, naming, preds, gts, seconds in arms:
                scored = score_arm(preds, gts, vocab, predicates, groups)
                runs.append({"llm": llm, "seed": seed, "mode": mode, "naming": naming, **scored,
                             "naming_probe": probes.get(naming), "chosen_on_validation": tuned,
                             "wall_s": round(trained.wall_s, 1), "predict_s_per_video": round(seconds, 3),
                             "test_videos": len(gts), "checkpoint": str(trained.final_dir),
                             "steps": sum(cfg.steps.values()) if llm == "tiny" else cfg.llm_steps})
                log.info("%s seed %d %s (%s): pvsg R@50 %.2f, zR@50 novel %s, seen-only-in-2D R@50 %s, "
                         "mapper %s, turns at the limit %s", llm, seed, mode, naming,
                         scored["metrics"]["pvsg"].get("R@50", float("nan")), scored["zR@50_novel"],
                         scored["recall@50_seen_only_in_2d"], scored["mapper_accuracy"], scored["turns_at_limit"])
            del model
    result = {
        "judged_on_world_seed": None if cfg.design else cfg.world_seed,
        "design_world_seed": cfg.world_seed if cfg.design else None,
        "design_worlds": list(DESIGN_WORLDS),
        "training_seeds": list(cfg.seeds),
        "novel_categories": sorted(groups["novel"]),
        "seen_only_in_2d_categories": sorted(groups["seen_only_in_2d"]),
        "naming_vocabulary": vocab,
        "naming_chance": round(1.0 / len(vocab), 4),
        "defaults_chosen_on": {
            "chain_prob 0.5, the first five stages' steps, llm_steps 300": "a priori (design world 1, BENCHMARKS.md); "
                                                                           "not on this world",
            "attribute_fit's steps and learning rate (attribute_lr); every attribute field read against the "
            "ring around the tube":
                "psg4d experiment colour_reading on design world 1's validation videos (without and with a checkpoint "
                "trained there; bench/results/colour_reading*.json); not on this world",
            "the ring's width (psg4d.model.attributes RING_CELLS 1) and CONTRAST_FLOOR 0.01":
                "the width by a probe of 1 to 3 cells on the same videos (BENCHMARKS.md), the floor a priori",
            "attribute_form geometry (size and shape measured from the tube's depth), the form reader's lr "
            "(form_lr) and width, snap_to_depth's ABOVE_METRES":
                "design world 1: psg4d experiment chain --design with each attribute_form (the reading under which "
                "the most novel objects read right in every field; R@50 and zR@50 tied), psg4d experiment form_reading "
                "on its validation objects for lr and width (ABOVE_METRES 5 cm from a first probe, within the "
                "seeds' spread of the command's 8 cm; BENCHMARKS.md); not on this world",
            "naming over the whole vocabulary by the model's own LLM, calibrated against a neutral description":
                "a priori (psg4d experiment naming validates pretrained namers, not a model's own LLM)",
            "the namer LM of the 'vocabulary by' arm and its scoring (namer, namer_scoring)":
                "the validation group of psg4d experiment naming (leave one out over the 4D training categories; "
                "no test video): bench/results/naming.json chosen_on_validation",
            "label mapper threshold and edit budget": "its own validation table (psg4d.eval.automap_validation)",
            "chain decoding constrained by each turn's grammar": "a priori (no setting to choose)",
            "ranking weights (direct and chain, each its own), the unknown-object margin, --mode auto":
                "each run's own, by psg4d tune-ranking on this world's validation split (runs[].chosen_on_validation); "
                "the margin keeps 95 % (a priori) of the validation objects, all of training categories, known",
            "tagged objects and same-object merging in the chain": "as the direct reading does (its tag_objects "
                                                                   "and merge_viou 0.5); no setting chosen here",
        },
        "summary": summarise(runs),
        "runs": runs,
        "quick": cfg.quick,
        "machine": machine_info(),
        "config": jsonable(asdict(cfg)),
    }
    atomic_write_json(out / f"{NAME}.json", result, indent=1)
    plot_summary(out / f"{NAME}.svg", result["summary"])
    log.info("wrote %s and %s", out / f"{NAME}.json", out / f"{NAME}.svg")
    return result

