"""Automatic open-vocabulary label mapping: free text -> a target vocabulary.

An open-vocabulary model writes ``"Coffee Mugs"`` or ``"is grabbing"`` where the benchmark has
``"mug"`` and ``"holding"``. :class:`AutoLabelMapper` maps each label to one class of a
vocabulary, trying in order:

1. ``exact``: the label is a vocabulary entry, character for character.
2. ``normalised``: equal after :func:`canonical_label` (case, whitespace, ``-``/``_``/``/``
   and punctuation, the articles *a/an/the*, a leading *is/are/was/were/be/being*, and plural
   -> singular per word), or equal once the spaces are dropped as well (``"cellphone"`` /
   ``"cell phone"``). A form two vocabulary entries share is ambiguous and matches neither.
3. ``embedding``: the nearest vocabulary entry by cosine similarity of all-MiniLM-L6-v2
   sentence embeddings (:mod:`psg4d.eval.embedding`), accepted when the similarity is at least
   ``threshold``.
4. otherwise ``unmapped``: the label stays itself (it is never dropped nor forced onto a
   class); the nearest entry and its similarity are still reported.

The embedding step encodes each label in a short context of its kind (``"a mug"``, ``"a person
holding something"``; see :func:`embedding_text`), which ranks the right class first more often
than the bare word does (on the validation table below: top-1 0.75 -> 0.78, and at the chosen
threshold accuracy 0.62 -> 0.72, with no unrelated word accepted either way).

Threshold (:data:`DEFAULT_THRESHOLD` = 0.60), chosen on a validation table of its own
(:mod:`psg4d.eval.automap_validation`: 65 synonyms over the synthetic world's, PSG4D-HOI's and
PSG4D-GTA's classes and predicates, 31 unrelated words), *not* on the test tables of
``tests/test_labelmap_auto.py``. On the embedding step alone, right synonyms score 0.46-0.98
(median ~0.8) and unrelated words 0.27-0.56 (the highest: "poetry" -> book 0.56, "volcano" ->
lava lamp 0.56, "galaxy" -> phone 0.55). No unrelated word is accepted from 0.57 up; accuracy
(right class) is 0.74 at 0.57, 0.72 from 0.58 to 0.61 and falls after that. 0.60 sits on that
plateau about 0.04 above the highest unrelated word: a wrongly mapped label silently inflates
recall, while a synonym left unmapped stays visible in the report (and can be given in an
explicit label map), so the margin goes to rejection. The validation synonyms it loses are
mostly rare words ("pail", "pincers", "skittle", "blinds") the model does not know well.

:func:`auto_label_map` turns the mappings into an explicit :class:`~psg4d.eval.labelmap.LabelMap`
(unmapped labels are simply absent), so the metric scores exactly what an explicit label-map
file would give, and a report says what was mapped and how.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from psg4d.data.schema import SceneGraph4D
from psg4d.errors import ConfigError
from psg4d.eval.labelmap import LabelMap, normalize_label

log = logging.getLogger(__name__)

METHODS = ("exact", "normalised", "embedding", "unmapped")
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
    """How one free-text label was mapped.

    ``target``: the vocabulary entry (as the vocabulary spells it) or ``None`` when unmapped.
    ``method``: one of :data:`METHODS`. ``similarity``: 1.0 for ``exact``/``normalised``, the
    cosine similarity to ``nearest`` for ``embedding``/``unmapped`` (``None`` when no embedding
    was computed: an empty vocabulary or an empty label). ``nearest``: the closest entry, kept
    for an unmapped label so a report shows what it nearly matched.
    """

    text: str
    target: str | None
    method: str
    similarity: float | None
    nearest: str | None = None

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
    """Map free-text labels onto ``vocabulary`` (exact, normalised, then embedding >= ``threshold``).

    ``encoder``: anything with ``encode(texts) -> unit-norm [N, D] array`` (default: the packaged
    all-MiniLM-L6-v2 of :func:`psg4d.eval.embedding.default_encoder`, loaded on first need, so
    labels that match exactly or after normalisation never load the model). ``embedding=False``
    stops after the normalised step. Results are cached per label; the vocabulary's embeddings
    are computed once.
    """

    def __init__(
        self,
        vocabulary: Iterable[str],
        *,
        threshold: float = DEFAULT_THRESHOLD,
        kind: str | None = None,
        encoder: Any = None,
        embedding: bool = True,
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
        self._encoder = encoder
        self._exact = set(self.vocabulary)
        self._keys: list[dict[str, str | None]] = [{}, {}]  # canonical form, and without spaces
        for v in self.vocabulary:
            c = canonical_label(v)
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

    def _vocabulary_embeddings(self) -> np.ndarray:
        if self._vocab_emb is None:
            texts = [embedding_text(v, self.kind) for v in self.vocabulary]
            self._vocab_emb = np.asarray(self.encoder.encode(texts), np.float32)
        return self._vocab_emb

    def _lexical(self, text: str) -> LabelMapping | None:
        if text in self._exact:
            return LabelMapping(text, text, "exact", 1.0, text)
        c = canonical_label(text)
        for table, key in zip(self._keys, (c, c.replace(" ", ""))):
            hit = table.get(key) if key else None
            if hit is not None:
                return LabelMapping(text, hit, "normalised", 1.0, hit)
        return None

    def map(self, label: str) -> LabelMapping:
        """The mapping of one label."""
        return self.map_many([label])[0]

    def map_many(self, labels: Iterable[str]) -> list[LabelMapping]:
        """The mappings of ``labels``, in order; the embeddings of new labels are computed in one batch."""
        labels = [str(x) for x in labels]
        todo: list[str] = []
        for t in dict.fromkeys(labels):
            if t in self._cache:
                continue
            m = self._lexical(t)
            if m is not None:
                self._cache[t] = m
            elif not self.use_embedding or not self.vocabulary or not clean_label(t):
                self._cache[t] = LabelMapping(t, None, "unmapped", None)
            else:
                todo.append(t)
        if todo:
            sims = np.asarray(self.encoder.encode([embedding_text(t, self.kind) for t in todo]), np.float32)
            sims = sims @ self._vocabulary_embeddings().T  # [N, V] cosine similarities (unit-norm rows)
            for t, row in zip(todo, sims):
                j = int(np.argmax(row))
                s = float(row[j])
                near = self.vocabulary[j]
                if s >= self.threshold:
                    self._cache[t] = LabelMapping(t, near, "embedding", s, near)
                else:
                    self._cache[t] = LabelMapping(t, None, "unmapped", s, near)
        return [self._cache[t] for t in labels]


# ----------------------------------------------------------------------------- label maps


def mapping_report(mappings: dict[str, Sequence[LabelMapping]], *, max_listed: int = MAX_REPORTED) -> dict[str, Any]:
    """Counts per method and the (capped) list of mappings, per kind (``objects``/``predicates``).

    Listed in the order unmapped, embedding, normalised, exact (the ones worth a look first), each
    by increasing similarity; ``listed``/``total`` say whether the list was cut.
    """
    order = {"unmapped": 0, "embedding": 1, "normalised": 2, "exact": 3}
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
) -> tuple[LabelMap, dict[str, Any]]:
    """A :class:`LabelMap` from predicted labels onto the vocabularies, and its :func:`mapping_report`.

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
        mapper = AutoLabelMapper(vocab, threshold=threshold, kind=kind[:-1], encoder=encoder)
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
