"""Scoring of the ``chain`` experiment (:mod:`psg4d.experiments.chain`): one arm's predictions
(:func:`score_arm`), the renaming of the chain's language-named objects in free text or by another
LM (:func:`renamed`) or without the unknown-object outcome (:func:`without_unknown_objects`), the
language namer and its probe (:func:`namer_for`, :func:`naming_probe`), how well the frames' attributes
were read (:func:`attributes_read_right`) and the summary over training seeds (:func:`summarise`)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from psg4d.experiments.common import held_out_graphs, mean_std, protocol_metrics


def matched_objects(preds: list, gts: list) -> list[tuple[Any, Any]]:
    """``(ground-truth object, predicted object)`` for every ground-truth object with a tube that a
    predicted tube of its video matches (the best, vIoU >= 0.5, as in :mod:`psg4d.eval`)."""
    from psg4d.data.masks import rle_tube_viou

    out = []
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
            if best is not None:
                out.append((go, best))
    return out


def naming_report(matched: list[tuple[Any, Any]], label_map, novel: set[str]) -> tuple[float | None, dict, int]:
    """Over ``matched`` (:func:`matched_objects`): (mapper accuracy over language-named objects, what
    each novel GT category's matched objects were called, how many language-named objects were matched)."""
    hits = total = 0
    names: dict[str, Counter] = {c: Counter() for c in sorted(novel)}
    for go, best in matched:
        if go.category in names:
            names[go.category][str(best.category)] += 1
        if str(best.attributes.get("category_source", "")).startswith("language"):
            total += 1
            hits += label_map.object(best.category) == go.category
    return (round(100.0 * hits / total, 2) if total else None), {c: dict(n) for c, n in names.items()}, total


def attributes_read_right(matched: list[tuple[Any, Any]], categories: set[str] | None = None) -> dict[str, Any]:
    """Over ``matched`` (:func:`matched_objects`) ground-truth objects with a world description whose
    predicted object carries the attribute head's reading (``read_description``), of ``categories``
    only where given: the percentage of each field read right (size, colour, shape, pattern, pattern
    colour) and of every field together (``all``), and how many objects."""
    from psg4d.data.descriptions import object_description
    from psg4d.data.synth.describe import ATTRIBUTE_FIELDS, description_fields

    hits: Counter = Counter()
    n = 0
    for go, po in matched:
        if categories is not None and go.category not in categories:
            continue
        truth = description_fields(object_description(go) or "")
        read = description_fields(str(po.attributes.get("read_description") or ""))
        if truth is None or read is None:
            continue
        n += 1
        hits.update(f for f in ATTRIBUTE_FIELDS if truth[f] == read[f])
        hits["all"] += truth == read
    return {**{f: (round(100.0 * hits[f] / n, 2) if n else None) for f in (*ATTRIBUTE_FIELDS, "all")}, "objects": n}


def namer_for(model, vocab: list[str] | None, lm: tuple | None = None, *, calibrate: bool = True):
    """The chain's language namer for ``model`` (its training descriptions as the shots): the
    pretrained ``lm`` = ``(model, tokenizer)`` (:func:`psg4d.model.llm.load_language_model`), else the
    model's own LLM; over ``vocab``, or in free text where it is None; scores calibrated against a
    neutral description, or raw (``calibrate=False``)."""
    from psg4d.infer.categorise import LanguageCategoriser

    lm, tokenizer = lm if lm is not None else (model.llm, model.tokenizer)
    return LanguageCategoriser(llm=lm, tokenizer=tokenizer, examples=model.config.category_descriptions,
                               vocabulary=vocab, calibrate=calibrate)


def naming_probe(namer, categories: list[str]) -> dict[str, Any]:
    """Each of ``categories`` named by ``namer`` (a :class:`~psg4d.infer.categorise.LanguageCategoriser`
    over the whole vocabulary) from its world description alone: accuracy beside chance
    (``1 / len(vocabulary)``) and what each was called."""
    from psg4d.data.synth.describe import category_descriptions

    described = category_descriptions(categories)
    named = {c: namer(described[c]).name for c in categories}
    hits = sum(named[c] == c for c in categories)
    return {"accuracy": round(hits / max(len(categories), 1), 4), "chance": namer.chance,
            "named": named, "descriptions": described}


def renamed(preds: list, namer, how: str) -> list:
    """Copies of chain predictions whose language-named objects are named again by ``namer`` (in
    free text, or by another LM), ``how`` replacing "vocabulary" in their ``category_source``: the
    turns are the same, only that last naming differs (it reads nothing but the description), so
    it is redone from each object's description rather than predicting again."""
    import copy

    out = []
    for p in preds:
        q = copy.copy(p)
        q.objects = []
        for o in p.objects:
            o = copy.copy(o)
            if str(o.attributes.get("category_source", "")).startswith("language"):
                o.attributes = dict(o.attributes, vocabulary_name=o.category,
                                    category_source=o.attributes["category_source"].replace("vocabulary", how))
                # what the chain named it from: the description the frames read (an unknown object), else the written one
                source = o.attributes["category_source"]
                text = o.attributes.get("read_description") if "unknown object" in source else None
                o.category = namer(text or o.attributes.get("description") or o.category).name or o.category
            q.objects.append(o)
        out.append(q)
    return out


def without_unknown_objects(preds: list, predictor) -> list:
    """Copies of chain predictions named as ``predictor`` names them (a
    :class:`~psg4d.infer.chain.ChainPredictor` built with other naming settings, e.g.
    ``PredictorConfig(unknown_objects=False)``): every turn, tube and relation unchanged
    (:meth:`~psg4d.infer.chain_naming.ObjectNamer.rename`). What the unknown-object outcome costs or
    buys, without predicting again."""
    return [predictor.naming.rename(p) for p in preds]


def score_arm(preds: list, gts: list, vocab: list[str], predicates: list[str], groups: dict[str, set[str]]):
    """One arm's predictions scored through the label mapper: both protocols, the novel and
    seen-only-in-2D subsets, the language naming and the chain's problems (the module docstring)."""
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
    matched = matched_objects(preds, gts)
    accuracy, names, n_named = naming_report(matched, label_map, groups["novel"])
    problems = sum(int(p.meta.get("chain", {}).get("problems", 0)) for p in preds)
    at_limit = sum(st.get("stopped") == "length" for p in preds for st in p.meta.get("chain", {}).get("steps", []))
    return {
        "metrics": metrics,
        "zR@50_novel": subset["novel"][0], "novel_relations": subset["novel"][1],
        "recall@50_seen_only_in_2d": subset["seen_only_in_2d"][0],
        "seen_only_in_2d_relations": subset["seen_only_in_2d"][1],
        "mapper_accuracy": accuracy, "language_named_objects": n_named, "novel_named_as": names,
        "label_mapping": mapping, "chain_problems": problems, "turns_at_limit": at_limit,
        "attributes_read_right": attributes_read_right(matched),
        "attributes_read_right_novel": attributes_read_right(matched, set(groups["novel"])),
    }


SUMMARY_KEYS = ("metrics.pvsg.R@50", "metrics.pvsg.mR@50", "metrics.volumetric.R@50", "zR@50_novel",
                "recall@50_seen_only_in_2d", "mapper_accuracy", "chain_problems", "turns_at_limit",
                "naming_probe.accuracy", "attributes_read_right.colour", "attributes_read_right.shape",
                "attributes_read_right.all", "attributes_read_right_novel.size", "attributes_read_right_novel.shape",
                "attributes_read_right_novel.all",
                "predict_s_per_video", "wall_s")


def _get(rec: dict[str, Any], key: str) -> float | None:
    node: Any = rec
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return None if node is None else float(node)


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per arm (llm, mode, naming): mean ± std over its training seeds of :data:`SUMMARY_KEYS`."""
    arms = list(dict.fromkeys((r["llm"], r["mode"], r["naming"]) for r in runs))
    out = []
    for llm, mode, naming in arms:
        mine = [r for r in runs if (r["llm"], r["mode"], r["naming"]) == (llm, mode, naming)]
        out.append({"llm": llm, "mode": mode, "naming": naming, "seeds": [r["seed"] for r in mine],
                    **{k: mean_std(_get(r, k) for r in mine) for k in SUMMARY_KEYS}})
    return out


def plot_summary(path, summary: list[dict[str, Any]]) -> None:
    """The chain experiment's plot: R@50, zR@50 on novel categories and R@50 on those seen only in 2D per arm."""
    from psg4d.viz.plots import write_bar_chart

    def mean(r: dict[str, Any], key: str) -> float:
        return r[key]["mean"] or 0.0

    labels = [f"{r['llm']} {r['mode']}{' (' + r['naming'] + ')' if r['naming'] else ''}" for r in summary]
    series = {"R@50": [mean(r, "metrics.pvsg.R@50") for r in summary],
              "zR@50 novel": [mean(r, "zR@50_novel") for r in summary],
              "R@50 seen only in 2D": [mean(r, "recall@50_seen_only_in_2d") for r in summary]}
    write_bar_chart(path, labels, series, title="chained vs direct inference (pvsg protocol; mean over seeds)",
                    unit="%")
