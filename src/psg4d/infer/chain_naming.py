"""Naming the chain's objects: the written name, what the frames read, or language knowledge.

:class:`ObjectNamer` decides the category of each object the chained predictor
(:mod:`psg4d.infer.chain`) found, from what the describe turn wrote (a description and a name)
and, with an attribute head (:mod:`psg4d.model.attributes`), what the frames under its tube read
(a description and its margin over the nearest training category's):

* a reading no training category has, whose margin exceeds ``unknown_margin``, makes the object
  an **unknown object**, named from that reading by language alone (unless the written name is
  one the head cannot describe: a hand's reading says nothing about a hand);
* otherwise, with a reading, the frames vouch for a written name of the training vocabulary;
* without a reading the written description decides: one training connected to a category keeps
  the written name, an unseen one (or a name outside the vocabulary) is named by language.

Language naming is :class:`~psg4d.infer.categorise.LanguageCategoriser`: the 4D-LLM's own LLM with
its adapters off, or another pretrained LM (``PredictorConfig.namer``). ``unknown_margin`` is the
config's, else the one ``psg4d tune-ranking`` chose on validation for the checkpoint
(``ranking.json``), else 0. Names are decided when a prediction is ranked, so one set of
candidates can be named under several settings, and :meth:`ObjectNamer.rename` names a finished
prediction again.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Iterable

from psg4d.data.schema import SceneGraph4D
from psg4d.data.synth.describe import description_fields
from psg4d.infer.categorise import LanguageCategoriser
from psg4d.infer.predictor import PredictorConfig
from psg4d.infer.ranking import load_unknown_margin
from psg4d.model.chain_text import ChainObject, normalize_description
from psg4d.model.llm import load_language_model
from psg4d.model.psg4d_llm import PSG4DModel

log = logging.getLogger(__name__)

#: where the unknown-object margin came from when neither the config nor the checkpoint chose one
UNCHOSEN_MARGIN = "none: no unknown_margin in the checkpoint's ranking.json (psg4d tune-ranking), 0: any reading no category has"

#: an object's reading by the attribute head: (description, margin), None without one
Reading = tuple[str, float] | None


class ObjectNamer:
    """Names chain objects under one :class:`PredictorConfig` (see the module docstring)."""

    def __init__(self, *, model: PSG4DModel, config: PredictorConfig):
        self.config = config
        mc = model.config
        self.vocab = {c.lower(): c for c in mc.object_vocab}
        self.known_descriptions = {normalize_description(d): c for c, ds in mc.category_descriptions.items()
                                   for d in ds}
        # categories the attribute head can describe (a description that splits into its fields): only
        # for these can what the frames read tell a training category from an unknown object
        self.describable = {c.lower() for c, ds in mc.category_descriptions.items()
                            if any(description_fields(d) is not None for d in ds)}
        given = config.unknown_margin
        chosen = None if given is not None else load_unknown_margin(model.checkpoint_dir)
        self.unknown_margin, self.unknown_margin_chosen_on = (
            (given, "given (PredictorConfig.unknown_margin)") if given is not None
            else chosen if chosen is not None else (0.0, UNCHOSEN_MARGIN))
        self.namer = self._namer(model)
        self._named: dict[tuple, dict[str, Any]] = {}  # the same object named again (a ranking grid) costs nothing

    def _namer(self, model: PSG4DModel) -> LanguageCategoriser:
        """The language namer: the LLM ``config.namer`` names (loaded once, frozen, on the model's
        device), else the 4D-LLM's own LLM, whose adapters it switches off to name."""
        llm, tokenizer = model.llm, model.tokenizer
        if self.config.namer is not None:
            llm, tokenizer = load_language_model(self.config.namer)
            llm = llm.to(next(model.parameters()).device)
            log.info("objects of unseen kinds are named by %s", self.config.namer)
        return LanguageCategoriser(llm=llm, tokenizer=tokenizer, examples=model.config.category_descriptions,
                                   vocabulary=self.config.vocabulary)

    def __call__(self, obj: ChainObject, read: Reading = None) -> dict[str, Any]:
        """``{"category", "source"[, "model_category", "language_score"]}`` of ``obj`` given the
        frames' ``read`` (module docstring)."""
        key = (obj.description, obj.category, read)
        if key not in self._named:
            self._named[key] = self._name(obj, read)
        return dict(self._named[key])

    def _name(self, obj: ChainObject, read: Reading) -> dict[str, Any]:
        written = obj.category.lower()
        if read is not None:
            text, margin = read
            unknown = (normalize_description(text) not in self.known_descriptions and margin > self.unknown_margin
                       and (written in self.describable or written not in self.vocab))
            if self.config.unknown_objects and unknown:
                naming = self.namer(text)
                return {"category": naming.name or obj.category, "model_category": obj.category,
                        "source": f"language ({naming.how}; unknown object: the frames read {text!r})",
                        **({"language_score": naming.score} if naming.score is not None else {})}
            if written in self.vocab:
                return {"category": self.vocab[written], "source": "model"}
        seen = normalize_description(obj.description) in self.known_descriptions
        if read is None and seen and written in self.vocab:
            return {"category": self.vocab[written], "source": "model"}
        naming = self.namer(obj.description or obj.category)
        why = "unseen description" if not seen else "name outside the training vocabulary"
        return {"category": naming.name or obj.category, "source": f"language ({naming.how}; {why})",
                "model_category": obj.category, **({"language_score": naming.score} if naming.score is not None else {})}

    def rename(self, graph: SceneGraph4D) -> SceneGraph4D:
        """A copy of the chain prediction ``graph`` with every object named again under this
        namer's settings, from what the graph recorded of it (the written description and name,
        the frames' reading and margin): the turns, tubes and relations are the same. What a
        naming setting costs or buys, without predicting again."""
        out = copy.copy(graph)
        out.objects = []
        for o in graph.objects:
            o = copy.copy(o)
            a = o.attributes
            written = ChainObject(index=0, description=a.get("description", ""),
                                  category=a.get("model_category", o.category), obj_index=0)
            read = (a["read_description"], float(a.get("read_margin", 0.0))) if "read_description" in a else None
            named = self(written, read)
            o.category = named["category"]
            o.attributes = {k: v for k, v in a.items() if k not in ("model_category", "language_score")}
            o.attributes.update(category_source=named["source"],
                                **{k: named[k] for k in ("model_category", "language_score") if k in named})
            out.objects.append(o)
        out.meta = dict(graph.meta, chain=dict(graph.meta.get("chain", {}), unknown_margin=self.record()))
        return out

    def gate_margins(self, objects: Iterable[tuple[ChainObject, Reading]]) -> list[float]:
        """The reading margins of the ``(written object, reading)`` pairs the unknown-object gate
        judges (read, and written with a name the head can describe): what
        :func:`~psg4d.infer.ranking.choose_unknown_margin` chooses from on validation."""
        return [float(read[1]) for obj, read in objects
                if read is not None and obj.category.lower() in self.describable]

    def record(self) -> dict[str, Any]:
        """What a prediction records of the unknown-object gate it was named under."""
        return {"margin": self.unknown_margin, "chosen_on": self.unknown_margin_chosen_on,
                "applied": bool(self.config.unknown_objects)}


__all__ = ["UNCHOSEN_MARGIN", "ObjectNamer"]
