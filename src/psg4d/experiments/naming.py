"""Experiment ``naming``: can the LLM name a category it never saw from its description alone?

    psg4d experiment naming [--llm smollm2-135m --llm gemma3-270m] [--quick] [--out runs/experiments/naming]

The language half of open vocabulary, measured without any training: every category the ``chain``
experiment's world keeps out of 4D training (its novel ones, and the ones only 2D images show) is
named from its world description (:mod:`psg4d.data.synth.describe`: "small red sphere") by the
LLM's own language knowledge (:class:`~psg4d.infer.categorise.LanguageCategoriser`, the path the
chained predictor takes for an unknown object), over the **whole** vocabulary of the world, few-shot
from the categories 4D training does show. For a pretrained LLM this is the base model (the chain
turns its LoRA adapters off to name), so it holds before and after fine-tuning; a randomly
initialised ``tiny`` LLM (``--llm tiny``) has no language knowledge and sits at chance.

Each LM is also scored on a **validation** group that touches no held-out category: every category
4D training shows, named from its description with the others as the shots (leave one out). The
namer a chain should use is chosen there (``chosen_on_validation``), not on the held-out groups.

Each LM names twice: with scores calibrated against a neutral description (the default of
:class:`~psg4d.infer.categorise.LanguageCategoriser`) and raw.

Writes ``OUT/naming.json``: ``vocabulary``, ``chance`` (1 / its size), ``shots_from``, ``llms``
({name: {calibrated | raw: {``groups`` ({novel | seen_only_in_2d: {accuracy, chance, named,
descriptions}}), ``accuracy`` over all held-out categories, ``validation_leave_one_out``,
``seconds``}}}), ``chosen_on_validation`` ({llm, scoring}); and ``OUT/naming.svg`` (the LMs side by side, chance beside them).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from psg4d.errors import ConfigError
from psg4d.experiments.chain_config import NOVEL
from psg4d.experiments.chain_scoring import naming_probe
from psg4d.experiments.output import check_output_folder, jsonable, machine_info
from psg4d.infer.categorise import LanguageCategoriser
from psg4d.utils.io import atomic_write_json

log = logging.getLogger(__name__)

NAME = "naming"
LLMS = ("smollm2-135m", "gemma3-270m", "tiny")
SCORINGS = ("calibrated", "raw")  # names scored against a neutral description's, or raw log-probabilities


@dataclass(kw_only=True)
class NamingConfig:
    out: Path = Path("runs/experiments/naming")  # the shipped results: --out bench/results
    llms: list[str] = field(default_factory=lambda: ["smollm2-135m", "gemma3-270m"])
    quick: bool = False  # the tiny LLM only (nothing to load): numbers meaningless

    def __post_init__(self) -> None:
        if self.quick:
            self.llms = ["tiny"]
        bad = [m for m in self.llms if m not in LLMS]
        if bad or not self.llms or len(set(self.llms)) != len(self.llms):
            raise ConfigError(f"--llm: distinct names from {list(LLMS)}, got {self.llms}")


def _llm(name: str, words: list[str]):
    """``(causal LM, tokenizer)``: a pretrained one as released, or the random tiny one over ``words``."""
    from psg4d.model.llm import LLMConfig, build_llm, load_language_model

    if name != "tiny":
        return load_language_model(name)
    llm, tokenizer = build_llm(LLMConfig(name="tiny"), vocab_words=words, max_frames=16)
    return llm.eval(), tokenizer


def _leave_one_out(llm, tokenizer, vocab: list[str], examples: dict[str, list[str]], calibrate: bool = True) -> dict[str, Any]:
    """The validation group: each category 4D training shows, named from its description with the
    others as the shots (never itself), over the whole vocabulary. Choosing between namer LMs on
    it touches no held-out category."""
    named, described = {}, {}
    for c in examples:
        namer = LanguageCategoriser(llm=llm, tokenizer=tokenizer, vocabulary=vocab, calibrate=calibrate,
                                    examples={k: v for k, v in examples.items() if k != c})
        described[c] = examples[c][0]
        named[c] = namer(described[c]).name
    hits = sum(named[c] == c for c in named)
    return {"accuracy": round(hits / max(len(named), 1), 4), "chance": round(1.0 / len(vocab), 4),
            "named": named, "descriptions": described}


def _one(name: str, vocab: list[str], groups: dict[str, list[str]], examples: dict[str, list[str]]) -> dict[str, Any]:
    """One LM's namings, scores calibrated against a neutral description and raw, side by side."""
    from psg4d.data.synth.describe import attribute_words

    llm, tokenizer = _llm(name, [*vocab, *attribute_words(), "object", "name", ":", "."])
    out = {}
    for scoring, calibrate in (("calibrated", True), ("raw", False)):
        t0 = time.perf_counter()
        namer = LanguageCategoriser(llm=llm, tokenizer=tokenizer, examples=examples, vocabulary=vocab,
                                    calibrate=calibrate)
        probes = {g: naming_probe(namer, cats) for g, cats in groups.items()}
        hits = sum(probes[g]["accuracy"] * len(cats) for g, cats in groups.items())
        validation = _leave_one_out(llm, tokenizer, vocab, examples, calibrate)
        held_out = sum(len(c) for c in groups.values())
        log.info("%s (%s): named %.0f %% of %d held-out categories right; validation, leave one out: %.0f %% of %d",
                 name, scoring, 100 * hits / held_out, held_out, 100 * validation["accuracy"], len(examples))
        out[scoring] = {"groups": probes, "accuracy": round(hits / held_out, 4),
                        "validation_leave_one_out": validation, "seconds": round(time.perf_counter() - t0, 1)}
    return out


def run(cfg: NamingConfig) -> dict[str, Any]:
    from psg4d.data.synth.describe import category_descriptions
    from psg4d.data.synth.world import preset_vocabulary
    from psg4d.viz.plots import write_bar_chart

    out = check_output_folder(cfg.out, name=NAME, quick=cfg.quick)
    voc = preset_vocabulary("hoi")
    vocab = list(voc.all_categories)
    groups = {"novel": sorted(NOVEL), "seen_only_in_2d": sorted(set(voc.held_out) - set(NOVEL))}
    shots_from = [c for c in vocab if c not in NOVEL and c not in voc.held_out]
    examples = {c: [d] for c, d in category_descriptions(shots_from).items()}
    per_llm = {name: _one(name, vocab, groups, examples) for name in cfg.llms}
    # the namer (LM and scoring) a chain should use: the best on validation, the first on ties
    options = [(n, sc) for n in cfg.llms for sc in SCORINGS]
    best = max(options, key=lambda o: per_llm[o[0]][o[1]]["validation_leave_one_out"]["accuracy"])
    chosen = {"llm": best[0], "scoring": best[1]}
    chance = round(1.0 / len(vocab), 4)
    result = {
        # no world is synthesised and nothing trains: the descriptions are the attribute table's
        "judged_on_world_seed": None, "training_seeds": [],
        "defaults_chosen_on": {
            "namer LM and scoring (chosen_on_validation)": "the validation group (leave one out)",
            "vocabulary (the hoi preset's classes), shots (the 4D training categories)": "a priori",
        },
        "vocabulary": vocab, "chance": chance, "shots_from": shots_from, "llms": per_llm,
        "chosen_on_validation": chosen, "quick": cfg.quick, "machine": machine_info(), "config": jsonable(asdict(cfg)),
    }
    atomic_write_json(out / f"{NAME}.json", result, indent=1)
    labels = ["validation (leave one out)", *groups, "held out, all"]
    series = {f"{n}, {sc} (%)": [100 * r[sc]["validation_leave_one_out"]["accuracy"],
                                 *(100 * r[sc]["groups"][g]["accuracy"] for g in groups), 100 * r[sc]["accuracy"]]
              for n, r in per_llm.items() for sc in SCORINGS}
    series["chance (%)"] = [100 * chance] * len(labels)
    write_bar_chart(out / f"{NAME}.svg", labels, series,
                    title=f"Naming from a description alone ({len(vocab)} classes)", unit="%")
    log.info("namer chosen on validation: %s, %s scores", chosen["llm"], chosen["scoring"])
    return result
