"""Automatic open-vocabulary label mapping: free text -> a target vocabulary.

An open-vocabulary model writes ``"Coffee Mugs"`` or ``"is grabbing"`` where the benchmark has
``"mug"`` and ``"holding"``. :class:`AutoLabelMapper` maps each label to one class of a
vocabulary, trying in order:

1. ``exact``: the label is a vocabulary entry, character for character.
2. ``normalised``: equal after :func:`canonical_label` (case, whitespace, ``-``/``_``/``/``
   and punctuation, the articles *a/an/the*, a leading *is/are/was/were/be/being*, and plural
   -> singular per word), or equal once the spaces are dropped as well (``"cellphone"`` /
   ``"cell phone"``). A form two vocabulary entries share is ambiguous and matches neither.
3. ``typo``: the one entry within an edit budget of the label (:mod:`psg4d.eval.lexical`:
   optimal-string-alignment distance, 1 edit from 4 letters, 2 from 8, none for 3 letters or
   fewer), unless two entries tie, the label's differing word is a real word ("cable" is not a
   misspelt table), or the two name different directions.
4. ``embedding``: the most similar vocabulary entry by cosine similarity of all-MiniLM-L6-v2
   sentence embeddings (:mod:`psg4d.eval.embedding`) that the direction guard allows, accepted
   when the similarity is at least ``threshold``. The guard
   (:func:`~psg4d.eval.lexical.direction_conflict`) refuses an entry naming the opposite
   direction of the label ("in back of" / in front of, "under" / on, "away" / toward) or another
   one ("under" / behind): the embedding puts such pairs close together.
5. otherwise ``unmapped``: the label stays itself (it is never dropped nor forced onto a
   class); the nearest allowed entry and its similarity are still reported.

Each :class:`LabelMapping` says why in a one-line ``reason``, written to the report's JSON. The
embedding step encodes a label in a short context of its kind (``"a mug"``, ``"a person holding
something"``; :func:`embedding_text`): top-1 on the 65 validation synonyms of its day 0.75 -> 0.78.

Threshold (:data:`DEFAULT_THRESHOLD` = 0.60), chosen on a validation table of its own
(:mod:`psg4d.eval.automap_validation`: 64 synonyms, 35 misspellings and 13 direction cases over
the synthetic world's, PSG4D-HOI's and PSG4D-GTA's classes and predicates, 31 unrelated words),
*not* on the test tables of ``tests/test_labelmap_auto.py``. Unrelated words score 0.27-0.56 on
their nearest class (the highest: "poetry" -> book 0.56, "volcano" -> lava lamp 0.56, "galaxy"
-> phone 0.55), so none is accepted from 0.57 up. Right class over the three tables, with the
typo step and the guard: 0.848 at 0.57, 0.857 at 0.58 (one synonym more: "desk" -> table
0.583), 0.848 from 0.59 to 0.61 (synonyms 0.75, misspellings 0.97, direction cases 1.00), then
falling (0.839 at 0.62, 0.812 at 0.65). 0.60 sits on that plateau about 0.04 above the highest
unrelated word: a wrongly mapped label silently inflates recall, while a synonym left unmapped
stays visible in the report (and can be given in an explicit label map), so the margin goes to
rejection rather than to one label at 0.583. The validation synonyms it loses are mostly rare
words ("pail", "pincers", "skittle", "blinds") the model does not know well, and near
neighbours of another class ("cushion" -> sofa 0.65). Real words one edit from a class can
still pass on meaning alone ("sand" -> beach ball 0.66, "folding" -> holding 0.61).

:func:`auto_label_map` turns the mappings into an explicit :class:`~psg4d.eval.labelmap.LabelMap`
(unmapped labels are simply absent), so the metric scores exactly what an explicit label-map
file would give, and a report says what was mapped and how.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass
from typing import Any, Collection, Iterable, Sequence

import numpy as np

from psg4d.data.schema import SceneGraph4D
from psg4d.errors import ConfigError
from psg4d.eval.labelmap import LabelMap, normalize_label
from psg4d.eval.lexical import DEFAULT_TYPO_BUDGET, TypoBudget, direction_conflict, known_words, nearest_typo

log = logging.getLogger(__name__)

METHODS = ("exact", "normalised", "typo", "embedding", "unmapped")
KINDS = (None, "object", "predicate")
DEFAULT_THRESHOLD = 0.60
#: mappings listed in a report (the counts cover all of them)
MAX_REPORTED = 200

_ARTICLES = frozenset({"a", "an", "the"})
_COPULAS = frozenset({"is", "are", "was", "were", "be", "being"})
_IRREGULAR = {
    "people": "person", "persons": "person", "men": "man", "women": "woman", "children": "child",
    "knives": "knife", "shelves": "shelf", "leaves": "leaf", "loaves": "loaf", "wolves": "wolf",
    "mice": "mouse", "feet": "foot", "teeth": "tooth", "geese": "goose", "dice": "die",
}  # fmt: skip
# words whose final s is not a plural mark worth folding: "glasses" (eyewear) must not become
# "glass" (a drinking glass); the others are function words longer than three letters
_KEEP_S = frozenset({"glasses", "this", "does", "always", "perhaps"})
_POSSESSIVE = re.compile(r"(?<=\w)'s\b")
_SEPARATORS = re.compile(r"[-_/\\|.,;:!?()\[\]{}\"']+")


def _singular(word: str) -> str:
    """A conservative plural -> singular of one lower-case word ("mugs" -> "mug", "boxes" -> "box")."""
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if word == "towards":
        return "toward"
    if word in _KEEP_S or len(word) <= 3 or not word.endswith("s") or not word.isalpha():
        return word
    if word.endswith(("ss", "us", "is")):  # glass, cactus, axis
        return word
    if word.endswith("ies") and len(word) > 4:  # berries -> berry
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "sses", "xes", "zzes")):  # benches, dishes, dresses, boxes
        return word[:-2]
    if word.endswith("oes") and len(word) > 5:  # tomatoes, potatoes (not shoes/toes)
        return word[:-2]
    return word[:-1]


def _clean_words(label: str) -> list[str]:
    """Lower-case words, separators and punctuation turned into spaces, articles and a leading
    copula dropped (``"The coffee-mug"`` -> ``["coffee", "mug"]``, ``"is holding"`` -> ``["holding"]``)."""
    words = _SEPARATORS.sub(" ", _POSSESSIVE.sub("", normalize_label(label))).split()
    words = [w for w in words if w not in _ARTICLES]
    while len(words) > 1 and words[0] in _COPULAS:
        words = words[1:]
    return words


def clean_label(label: str) -> str:
    """The text the embedding sees: :func:`_clean_words` joined (no plural folding, the model handles it)."""
    return " ".join(_clean_words(label))


def embedding_text(label: str, kind: str | None = None) -> str:
    """The sentence the encoder sees for a label: :func:`clean_label` put in a short context of its
    ``kind`` (a bare word is ambiguous: "a can", "a person holding something")."""
    text = clean_label(label)
    if kind == "object":
        return f"{'an' if text[:1] and text[0] in 'aeiou' else 'a'} {text}"
    if kind == "predicate":
        return f"a person {text} something"
    return text


def canonical_label(label: str) -> str:
    """The normalised form two spellings of one class share: ``"The Coffee-Mugs"`` -> ``"coffee mug"``."""
    return " ".join(_singular(w) for w in _clean_words(label))


@dataclass(frozen=True)
class LabelMapping:
    """How one free-text label was mapped, and why.

    ``target``: the vocabulary entry (as the vocabulary spells it) or ``None`` when unmapped.
    ``method``: one of :data:`METHODS`. ``similarity``: 1.0 for ``exact``/``normalised``, the
    cosine similarity to ``nearest`` for ``embedding``/``unmapped``, ``None`` where no embedding
    decided it (``typo``; an empty vocabulary or label; the embedding step switched off).
    ``nearest``: the closest entry, kept for an unmapped label so a report shows what it nearly
    matched. ``reason``: one human-readable line saying why (the normalised form, the edits, the
    similarity against the threshold, the candidates the direction guard refused).
    """

    text: str
    target: str | None
    method: str
    similarity: float | None
    nearest: str | None = None
    reason: str = ""

    @property
    def mapped(self) -> bool:
        return self.target is not None

    @property
    def label(self) -> str:
        """What the label scores as: its class, or the text itself when unmapped."""
        return self.target if self.target is not None else self.text

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        if d["similarity"] is not None:
            d["similarity"] = round(float(d["similarity"]), 4)
        return d


class AutoLabelMapper:
    """Map free-text labels onto ``vocabulary``: exact, normalised, typo, then embedding >= ``threshold``.

    ``encoder``: anything with ``encode(texts) -> unit-norm [N, D] array`` (default: the packaged
    all-MiniLM-L6-v2 of :func:`psg4d.eval.embedding.default_encoder`, loaded on first need, so
    labels the lexical steps match never load the model). ``typo``: the edit budget of the typo
    step (``None``: no typo step). ``known_words``: real words the typo step never corrects
    (default: the packaged tokenizer's whole words, :func:`psg4d.eval.lexical.known_words`, read
    on the first label that reaches a typo candidate). ``direction_guard=False`` turns off
    :func:`psg4d.eval.lexical.direction_conflict` (for measuring it). ``embedding=False`` stops
    after the lexical steps. Results are cached per label; the vocabulary's embeddings are computed once.
    """

    def __init__(
        self,
        vocabulary: Iterable[str],
        *,
        threshold: float = DEFAULT_THRESHOLD,
        kind: str | None = None,
        encoder: Any = None,
        embedding: bool = True,
        typo: TypoBudget | None = DEFAULT_TYPO_BUDGET,
        known_words: Collection[str] | None = None,
        direction_guard: bool = True,
    ):
        if kind not in KINDS:
            raise ConfigError(f"the label mapper's kind must be 'object', 'predicate' or None, got {kind!r}")
        self.kind = kind
        vocab = [str(v) for v in vocabulary]
        if any(not normalize_label(v) for v in vocab):
            raise ConfigError("the label mapper's vocabulary has an empty entry")
        if not (-1.0 <= float(threshold) <= 1.0):
            raise ConfigError(f"the label mapper's similarity threshold must be in [-1, 1], got {threshold}")
        # one entry per normalize_label form (the metric compares normalised labels), first spelling kept
        by_norm: dict[str, str] = {}
        for v in vocab:
            by_norm.setdefault(normalize_label(v), v)
        self.vocabulary: list[str] = list(by_norm.values())
        self.threshold = float(threshold)
        self.use_embedding = bool(embedding)
        self.typo = typo
        self.direction_guard = bool(direction_guard)
        self._known = None if known_words is None else frozenset(known_words)
        self._encoder = encoder
        self._exact = set(self.vocabulary)
        self._forms = {v: canonical_label(v) for v in self.vocabulary}
        # the spellings the typo step compares: cleaned (plurals kept) and canonical
        self._typo_forms = {v: tuple(dict.fromkeys((clean_label(v), c))) for v, c in self._forms.items()}
        self._keys: list[dict[str, str | None]] = [{}, {}]  # canonical form, and without spaces
        for v, c in self._forms.items():
            for table, key in zip(self._keys, (c, c.replace(" ", ""))):
                if key in table and table[key] != v:
                    log.info("label mapper: %r and %r share the normalised form %r; neither matches it",
                             table[key], v, key)
                    table[key] = None
                else:
                    table.setdefault(key, v)
        self._vocab_emb: np.ndarray | None = None
        self._cache: dict[str, LabelMapping] = {}

    @property
    def encoder(self) -> Any:
        if self._encoder is None:
            from psg4d.eval.embedding import default_encoder

            self._encoder = default_encoder()
        return self._encoder

    @property
    def known_words(self) -> frozenset[str]:
        if self._known is None:
            self._known = known_words()
        return self._known

    def _vocabulary_embeddings(self) -> np.ndarray:
        if self._vocab_emb is None:
            texts = [embedding_text(v, self.kind) for v in self.vocabulary]
            self._vocab_emb = np.asarray(self.encoder.encode(texts), np.float32)
        return self._vocab_emb

    def _conflict(self, words: list[str], entry: str) -> str | None:
        return direction_conflict(words, self._forms[entry].split()) if self.direction_guard else None

    def _lexical(self, text: str) -> LabelMapping | str:
        """The exact, normalised or typo mapping of ``text``, else a note for the reason of what follows."""
        if text in self._exact:
            return LabelMapping(text, text, "exact", 1.0, text, "exact: a vocabulary entry as it is")
        c = canonical_label(text)
        for table, key, how in zip(self._keys, (c, c.replace(" ", "")), ("", " without spaces")):
            hit = table.get(key) if key else None
            if hit is not None:
                why = f"normalised{how}: {text!r} -> {key!r}, the form of {hit!r}"
                return LabelMapping(text, hit, "normalised", 1.0, hit, why)
        if self.typo is None or not c:
            return ""
        # the known words are read only once a typo is in sight (a lambda: not for every label)
        found = nearest_typo((clean_label(text), c), self._typo_forms.items(), self.typo,
                             lambda w: w in self.known_words)
        if found is None:
            return ""
        if found.entry is None:
            return f"typo step declined ({found.why}); "
        refused = self._conflict(c.split(), found.entry)
        if refused:
            return f"typo step declined ({found.edit_text} from {found.entry!r}, {refused}); "
        why = (f"typo: {found.edit_text} from {found.entry!r} ({found.label_form!r} -> {found.entry_form!r}; "
               f"{found.budget} allowed for {found.letters} letters)")
        return LabelMapping(text, found.entry, "typo", None, found.entry, why)

    def _embedded(self, text: str, row: np.ndarray, note: str) -> LabelMapping:
        """The embedding step: the most similar entry the direction guard allows, if >= threshold.

        An unmapped label's ``nearest`` is the most similar entry the guard allows, so a report never
        shows an opposite as what it nearly matched; the reason lists the refusals >= threshold.
        """
        words = canonical_label(text).split()
        refused: list[str] = []
        for j in np.argsort(-row, kind="stable"):
            near, s = self.vocabulary[int(j)], float(row[int(j)])
            conflict = self._conflict(words, near)
            if conflict:
                if s >= self.threshold:
                    refused.append(f"{near!r} {s:.3f} ({conflict})")
                continue
            guard = f"direction guard refused {', '.join(refused)}; next nearest " if refused else ""
            if s < self.threshold:
                why = f"unmapped: {note}{guard or 'nearest '}{near!r} {s:.3f} < {self.threshold:g}"
                return LabelMapping(text, None, "unmapped", s, near, why)
            why = f"embedding: {guard}{near!r} similarity {s:.3f} >= {self.threshold:g}"
            return LabelMapping(text, near, "embedding", s, near, note + why)
        why = f"unmapped: {note}direction guard refused every entry ({', '.join(refused)})"
        return LabelMapping(text, None, "unmapped", None, None, why)

    def map(self, label: str) -> LabelMapping:
        """The mapping of one label."""
        return self.map_many([label])[0]

    def map_many(self, labels: Iterable[str]) -> list[LabelMapping]:
        """The mappings of ``labels``, in order; the embeddings of new labels are computed in one batch."""
        labels = [str(x) for x in labels]
        todo: dict[str, str] = {}
        for t in dict.fromkeys(labels):
            if t in self._cache:
                continue
            m = self._lexical(t)
            if isinstance(m, LabelMapping):
                self._cache[t] = m
            elif not self.vocabulary or not clean_label(t) or not self.use_embedding:
                why = "no vocabulary" if not self.vocabulary else "empty label" if not clean_label(t) else (
                    f"{m}no lexical match, embedding step off")
                self._cache[t] = LabelMapping(t, None, "unmapped", None, None, f"unmapped: {why}")
            else:
                todo[t] = m
        if todo:
            texts = list(todo)
            sims = np.asarray(self.encoder.encode([embedding_text(t, self.kind) for t in texts]), np.float32)
            sims = sims @ self._vocabulary_embeddings().T  # [N, V] cosine similarities (unit-norm rows)
            for t, row in zip(texts, sims):
                self._cache[t] = self._embedded(t, row, todo[t])
        return [self._cache[t] for t in labels]


# ----------------------------------------------------------------------------- label maps


def mapping_report(mappings: dict[str, Sequence[LabelMapping]], *, max_listed: int = MAX_REPORTED) -> dict[str, Any]:
    """Counts per method and the (capped) list of mappings, per kind (``objects``/``predicates``).

    Listed in the order unmapped, embedding, normalised, exact (the ones worth a look first), each
    by increasing similarity; ``listed``/``total`` say whether the list was cut.
    """
    order = {"unmapped": 0, "embedding": 1, "typo": 2, "normalised": 3, "exact": 4}
    out: dict[str, Any] = {}
    for kind, ms in mappings.items():
        counts = dict.fromkeys(METHODS, 0)
        for m in ms:
            counts[m.method] += 1
        ranked = sorted(ms, key=lambda m: (order[m.method], -1.0 if m.similarity is None else m.similarity, m.text))
        out[kind] = {
            "total": len(ms),
            "mapped": len(ms) - counts["unmapped"],
            "by_method": counts,
            "listed": min(len(ranked), max_listed),
            "mappings": [m.to_json() for m in ranked[:max_listed]],
        }
    return out


def auto_label_map(
    *,
    object_labels: Iterable[str] = (),
    predicate_labels: Iterable[str] = (),
    objects: Sequence[str] | None = None,
    predicates: Sequence[str] | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    encoder: Any = None,
    typo: TypoBudget | None = DEFAULT_TYPO_BUDGET,
) -> tuple[LabelMap, dict[str, Any]]:
    """A :class:`LabelMap` from predicted labels onto the vocabularies, and its :func:`mapping_report`
    (with the ``threshold`` and ``typo_budget`` it was made with; each mapping gives its ``reason``).

    Labels are taken once per :func:`normalize_label` form (the form the metric looks up). A kind
    whose vocabulary is ``None`` is not mapped (its labels are compared as they are).
    """
    tables: dict[str, dict[str, str]] = {"objects": {}, "predicates": {}}
    done: dict[str, Sequence[LabelMapping]] = {}
    for kind, labels, vocab in (("objects", object_labels, objects), ("predicates", predicate_labels, predicates)):
        if vocab is None:
            continue
        firsts: dict[str, str] = {}
        for x in labels:
            firsts.setdefault(normalize_label(x), str(x))
        mapper = AutoLabelMapper(vocab, threshold=threshold, kind=kind[:-1], encoder=encoder, typo=typo)
        ms = mapper.map_many(firsts.values())
        done[kind] = ms
        for m in ms:
            if m.target is not None and normalize_label(m.text) != normalize_label(m.target):
                tables[kind][m.text] = m.target
        log.info(
            "label mapper (%s): %d labels, %d mapped (%s)",
            kind,
            len(ms),
            sum(m.mapped for m in ms),
            ", ".join(f"{k} {sum(m.method == k for m in ms)}" for k in METHODS),
        )
    report = mapping_report(done)
    report["threshold"] = float(threshold)
    report["typo_budget"] = None if typo is None else typo.describe()
    return LabelMap.from_dict(tables, where="automatic label map"), report


def ground_truth_vocabulary(gts: Sequence[SceneGraph4D], options: dict[str, Any] | None = None) -> dict[str, list[str]]:
    """The vocabularies to map onto: the dataset's (``options``, as :func:`load_ground_truth` gives
    them), else the union of the GT graphs' ``object_vocab``/``predicate_vocab``, else the labels
    the GT graphs use."""
    options = options or {}
    out: dict[str, list[str]] = {}
    for kind, attr in (("objects", "object_vocab"), ("predicates", "predicate_vocab")):
        listed = options.get(kind)
        if not listed:
            listed = [v for g in gts for v in (getattr(g, attr) or ())]
        if not listed and kind == "objects":
            listed = [o.majority_category() for g in gts for o in g.objects]
        elif not listed:
            listed = [r.predicate for g in gts for r in g.relations]
        uniq: dict[str, str] = {}
        for v in listed:
            uniq.setdefault(normalize_label(v), str(v))
        out[kind] = list(uniq.values())
    return out


def auto_map_predictions(
    preds: Iterable[SceneGraph4D],
    gts: Iterable[SceneGraph4D],
    options: dict[str, Any] | None = None,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    encoder: Any = None,
) -> tuple[list[SceneGraph4D], list[SceneGraph4D], LabelMap, dict[str, Any]]:
    """``psg4d eval --label-map auto``: the predictions' labels mapped onto the ground truth's vocabulary.

    Reads ``preds`` and ``gts`` into lists (the labels are needed before scoring) and returns them
    with the :class:`LabelMap` and the :func:`mapping_report`.
    """
    pred_list, gt_list = list(preds), list(gts)
    vocab = ground_truth_vocabulary(gt_list, options)
    lm, report = auto_label_map(
        object_labels=[o.majority_category() for p in pred_list for o in p.objects],
        predicate_labels=[r.predicate for p in pred_list for r in p.relations],
        objects=vocab["objects"],
        predicates=vocab["predicates"],
        threshold=threshold,
        encoder=encoder,
    )
    report["vocabulary_size"] = {k: len(v) for k, v in vocab.items()}
    return pred_list, gt_list, lm, report
