"""Experiment ``naming``: can the LLM name a category it never saw from its description alone?

    psg4d experiment naming [--llm smollm2-135m] [--quick] [--out runs/experiments/naming]

The language half of open vocabulary, measured without any training: every category the ``chain``
experiment's world keeps out of 4D training (its novel ones, and the ones only 2D images show) is
named from its world description (:mod:`psg4d.data.synth.describe`: "small red sphere") by the
LLM's own language knowledge (:class:`~psg4d.infer.categorise.LanguageCategoriser`, the path the
chained predictor takes for an unknown object), over the **whole** vocabulary of the world, few-shot
from the categories 4D training does show. For a pretrained LLM this is the base model (the chain
turns its LoRA adapters off to name), so it holds before and after fine-tuning; a randomly
initialised ``tiny`` LLM (``--llm tiny``) has no language knowledge and sits at chance.

Writes ``OUT/naming.json``: ``llm``, ``vocabulary``, ``chance`` (1 / its size), ``shots_from``,
``groups`` ({novel | seen_only_in_2d: {accuracy, chance, named, descriptions}}), ``accuracy`` over
all of them, ``seconds``; and ``OUT/naming.svg``.
"""

from __future__ import annotations

import logging
import time
import types
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from psg4d.errors import ConfigError
from psg4d.experiments.chain import NOVEL
from psg4d.experiments.chain_scoring import naming_probe
from psg4d.experiments.output import check_output_folder, jsonable, machine_info
from psg4d.utils.io import atomic_write_json

log = logging.getLogger(__name__)

NAME = "naming"
LLMS = ("smollm2-135m", "tiny")


@dataclass(kw_only=True)
class NamingConfig:
    out: Path = Path("runs/experiments/naming")  # the shipped results: --out bench/results
    llm: str = "smollm2-135m"
    quick: bool = False  # the tiny LLM (nothing to load): numbers meaningless

    def __post_init__(self) -> None:
        if self.quick:
            self.llm = "tiny"
        if self.llm not in LLMS:
            raise ConfigError(f"--llm: choose from {list(LLMS)}, got {self.llm!r}")


def _llm(name: str, words: list[str]):
    """``(causal LM, tokenizer)`` of the preset ``name`` (the tiny one over ``words``)."""
    from psg4d.model.config import model_preset
    from psg4d.model.llm import build_llm

    llm, tokenizer = build_llm(model_preset(name).llm, vocab_words=words, max_frames=16)
    return llm.eval(), tokenizer


def run(cfg: NamingConfig) -> dict[str, Any]:
    from psg4d.data.synth.describe import attribute_words, category_descriptions
    from psg4d.data.synth.world import preset_vocabulary
    from psg4d.viz.plots import write_bar_chart

    out = check_output_folder(cfg.out, name=NAME, quick=cfg.quick)
    voc = preset_vocabulary("hoi")
    vocab = list(voc.all_categories)
    groups = {"novel": sorted(NOVEL), "seen_only_in_2d": sorted(set(voc.held_out) - set(NOVEL))}
    shots_from = [c for c in vocab if c not in NOVEL and c not in voc.held_out]
    examples = {c: [d] for c, d in category_descriptions(shots_from).items()}
    llm, tokenizer = _llm(cfg.llm, [*vocab, *attribute_words(), "object", "name", ":", "."])
    model = types.SimpleNamespace(llm=llm, tokenizer=tokenizer,
                                  config=types.SimpleNamespace(category_descriptions=examples))
    t0 = time.perf_counter()
    probes = {g: naming_probe(model, vocab, cats) for g, cats in groups.items()}
    hits = sum(probes[g]["accuracy"] * len(cats) for g, cats in groups.items())
    result = {
        "llm": cfg.llm, "vocabulary": vocab, "chance": round(1.0 / len(vocab), 4), "shots_from": shots_from,
        "groups": probes, "accuracy": round(hits / sum(len(c) for c in groups.values()), 4),
        "seconds": round(time.perf_counter() - t0, 1), "quick": cfg.quick, "machine": machine_info(),
        "config": jsonable(asdict(cfg)),
    }
    atomic_write_json(out / f"{NAME}.json", result, indent=1)
    write_bar_chart(out / f"{NAME}.svg", list(groups) + ["all"],
                    {"named right (%)": [100 * probes[g]["accuracy"] for g in groups] + [100 * result["accuracy"]],
                     "chance (%)": [100 * result["chance"]] * (len(groups) + 1)},
                    title=f"Naming from a description alone ({cfg.llm}, {len(vocab)} classes)", unit="%")
    log.info("%s named %.0f %% of %d held-out categories right (chance %.1f %%)", cfg.llm, 100 * result["accuracy"],
             sum(len(c) for c in groups.values()), 100 * result["chance"])
    return result
