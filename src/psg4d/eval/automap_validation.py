"""The validation table that fixed :data:`psg4d.eval.automap.DEFAULT_THRESHOLD`.

Kept apart from the test tables (``tests/test_labelmap_auto.py`` uses other words) so the
threshold is not tuned on what checks it. Re-run the sweep with::

    python -m psg4d.eval.automap_validation

It prints, per threshold, the share of :data:`SYNONYMS` mapped to the right class and the share
of :data:`UNRELATED` words wrongly mapped to some class. Only the embedding step depends on the
threshold; the lexical steps are threshold-free.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

#: vocabularies: the synthetic world's (psg4d.data.synth.world), PSG4D-HOI's and PSG4D-GTA's class
#: lists (docs: shared/reference/psg4d-facts.md; "void"/"noise"/"no label" left out), predicates
SYNTH_OBJECTS = (
    "mug", "can", "bottle", "thermos", "jar", "paint can", "book", "phone", "laptop", "stapler", "toy car",
    "cereal box", "tissue box", "apple", "lime", "ball", "globe", "spray bottle", "bowling pin", "cardboard box",
    "parcel", "crate", "suitcase", "pillow", "bucket", "trash bin", "beach ball", "basketball", "bowling ball",
    "lava lamp", "table", "chair", "sofa", "stool", "rug", "step", "hand", "person", "floor", "wall",
)  # fmt: skip
HOI_OBJECTS = (
    "Chair", "table", "water dispenser", "ground", "bucket", "garbage can", "wall", "sofa", "bag", "bowl",
    "bottled drinks", "mug", "locker", "express box", "kettle", "hammer", "pliers", "toy car", "laptop",
    "refrigerator", "safe", "stapler", "desk lamp", "trolley case", "Knife", "cupboard", "bed", "bedside table",
    "Door", "window", "mural", "counter", "curtain", "pool", "Pillow", "carpet", "television", "ceiling",
    "other furniture", "other objects", "Scissors",
)  # fmt: skip
GTA_OBJECTS = (
    "sky", "floor", "ceiling", "ground", "wall", "grass", "fence", "stair", "window", "other object", "chair",
    "sofa", "table", "bed", "person", "car", "motorcycle", "truck", "bird", "dog", "handbag", "suitcase", "bottle",
    "cup", "bowl", "potted plant", "dining table", "tv", "laptop", "cell phone", "bag", "bin", "box", "door",
    "road barrier", "stick",
)  # fmt: skip
SYNTH_PREDICATES = (
    "on", "next to", "in front of", "behind", "standing on", "sitting on", "holding", "reaching toward",
    "picking up", "putting down", "carrying", "pushing", "pulling", "walking toward", "talking to",
)  # fmt: skip
HOI_PREDICATES = ("reach out for", "pick up", "put down", "carry", "push", "pull")
#: the table-top part of the synthetic world (a "kitchen" vocabulary) for the rejection tables
KITCHEN_OBJECTS = SYNTH_OBJECTS[:30] + ("table", "hand")

VOCABULARIES: dict[str, Sequence[str]] = {
    "synth": SYNTH_OBJECTS,
    "hoi": HOI_OBJECTS,
    "gta": GTA_OBJECTS,
    "synth_predicates": SYNTH_PREDICATES,
    "hoi_predicates": HOI_PREDICATES,
    "kitchen": KITCHEN_OBJECTS,
}

#: (free text, vocabulary, right class)
SYNONYMS: tuple[tuple[str, str, str], ...] = (
    ("coffee cup", "synth", "mug"), ("soda can", "synth", "can"), ("water bottle", "synth", "bottle"),
    ("vacuum flask", "synth", "thermos"), ("glass jar", "synth", "jar"), ("tin of paint", "synth", "paint can"),
    ("novel", "synth", "book"), ("smartphone", "synth", "phone"), ("notebook computer", "synth", "laptop"),
    ("toy automobile", "synth", "toy car"), ("box of cereal", "synth", "cereal box"),
    ("kleenex box", "synth", "tissue box"), ("green apple", "synth", "apple"), ("world globe", "synth", "globe"),
    ("skittle", "synth", "bowling pin"), ("shipping box", "synth", "cardboard box"), ("package", "synth", "parcel"),
    ("wooden crate", "synth", "crate"), ("luggage", "synth", "suitcase"), ("cushion", "synth", "pillow"),
    ("pail", "synth", "bucket"), ("garbage can", "synth", "trash bin"), ("inflatable ball", "synth", "beach ball"),
    ("desk", "synth", "table"), ("armchair", "synth", "chair"), ("couch", "synth", "sofa"),
    ("carpet", "synth", "rug"), ("human hand", "synth", "hand"), ("man", "synth", "person"),
    ("ground", "synth", "floor"),
    ("freezer", "hoi", "refrigerator"), ("cooking pot", "hoi", "kettle"), ("teapot", "hoi", "kettle"),
    ("wardrobe", "hoi", "cupboard"), ("blinds", "hoi", "curtain"), ("mattress", "hoi", "bed"),
    ("pincers", "hoi", "pliers"), ("backpack", "hoi", "bag"), ("luggage trolley", "hoi", "trolley case"),
    ("automobile", "gta", "car"), ("scooter", "gta", "motorcycle"), ("sparrow", "gta", "bird"),
    ("mobile phone", "gta", "cell phone"), ("staircase", "gta", "stair"), ("television", "gta", "tv"),
    ("dumpster", "gta", "bin"), ("plant pot", "gta", "potted plant"),
    ("sits on", "synth_predicates", "sitting on"), ("stands on", "synth_predicates", "standing on"),
    ("beside", "synth_predicates", "next to"), ("grasping", "synth_predicates", "holding"),
    ("lifting up", "synth_predicates", "picking up"), ("setting down", "synth_predicates", "putting down"),
    ("dragging", "synth_predicates", "pulling"), ("shoving", "synth_predicates", "pushing"),
    ("speaking to", "synth_predicates", "talking to"), ("reaching for", "synth_predicates", "reaching toward"),
    ("on top of", "synth_predicates", "on"), ("transporting", "synth_predicates", "carrying"),
    ("in back of", "synth_predicates", "behind"), ("going toward", "synth_predicates", "walking toward"),
    ("grabbing for", "hoi_predicates", "reach out for"), ("lift", "hoi_predicates", "pick up"),
    ("place down", "hoi_predicates", "put down"), ("drag", "hoi_predicates", "pull"),
)  # fmt: skip

#: (free text, vocabulary): words that belong to no class
UNRELATED: tuple[tuple[str, str], ...] = tuple(
    (w, "kitchen")
    for w in ("photosynthesis", "inflation", "jazz", "algebra", "volcano", "thunderstorm", "poetry", "electron",
              "mortgage", "parliament", "giraffe", "tuesday", "guitar", "sadness", "galaxy", "biology", "justice",
              "orchestra", "glacier", "tiger")
) + tuple((w, "gta") for w in ("philosophy", "recipe", "lullaby", "grammar", "vitamin")) + tuple(
    (w, "synth_predicates") for w in ("evaporating", "voting", "multiplying", "singing", "dreaming", "freezing")
)  # fmt: skip


def similarities(encoder: Any = None) -> dict[str, list[tuple[str, str, float]]]:
    """Per table, ``(text, nearest class, cosine similarity)`` of the embedding step alone."""
    from psg4d.eval.automap import AutoLabelMapper

    out: dict[str, list[tuple[str, str, float]]] = {"synonyms": [], "unrelated": []}
    for table, rows in (("synonyms", SYNONYMS), ("unrelated", [(t, v, None) for t, v in UNRELATED])):
        for text, vocab, _ in rows:
            # threshold -1 accepts every nearest neighbour: its similarity is what is measured here
            kind = "predicate" if vocab.endswith("predicates") else "object"
            m = AutoLabelMapper(VOCABULARIES[vocab], threshold=-1.0, kind=kind, encoder=encoder)
            r = m.map(text)
            out[table].append((text, r.nearest or "", float(r.similarity if r.similarity is not None else 1.0)))
    return out


def sweep(thresholds: Sequence[float] = tuple(np.round(np.arange(0.30, 0.81, 0.01), 2)),
          encoder: Any = None) -> list[dict[str, float]]:
    """Per threshold: ``accuracy`` (synonyms mapped to the right class), ``false_accept`` (unrelated
    words mapped) and ``score`` = accuracy - false_accept, all in [0, 1]."""
    sims = similarities(encoder)
    gold = [c for _, _, c in SYNONYMS]
    rows = []
    for th in thresholds:
        acc = np.mean([n == g and s >= th for (_, n, s), g in zip(sims["synonyms"], gold)])
        fa = np.mean([s >= th for _, _, s in sims["unrelated"]])
        rows.append({"threshold": float(th), "accuracy": float(acc), "false_accept": float(fa),
                     "score": float(acc - fa)})
    return rows


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log = logging.getLogger("psg4d.eval.automap_validation")
    sims = similarities()
    for table, rows in sims.items():
        for text, near, s in sorted(rows, key=lambda r: r[2]):
            log.info("%-10s %-22s -> %-18s %.3f", table, text, near, s)
    for r in sweep():
        log.info("threshold %.2f  accuracy %.3f  false accept %.3f  score %.3f",
                 r["threshold"], r["accuracy"], r["false_accept"], r["score"])


if __name__ == "__main__":
    main()
