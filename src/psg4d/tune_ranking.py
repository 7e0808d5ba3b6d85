"""``psg4d tune-ranking``: a checkpoint's ranking weights, chosen on a validation split.

Every validation video is predicted once up to its ranking
(:meth:`~psg4d.infer.predictor.Predictor.score_candidates`); each pair of weights of the grid
then ranks the same candidates (:mod:`psg4d.infer.ranking`) and is scored under both protocols.
The pair with the best mean of pvsg R@50, pvsg mR@50 and volumetric R@50 (the three numbers the
4D-LLM is judged on) wins; ties go to the smaller weights (text only first). The weights, every
pair tried and where they were measured go to ``ranking.json`` in the checkpoint folder, which
every predictor of that checkpoint then reads. For a model trained on the chained text as well, the
chained prediction of the same videos gets its own weights the same way (with an attribute head,
after its unknown-object margin: the one that keeps 95 % of the validation objects known), and the
better of the two modes is recorded as what ``--mode auto`` predicts with.

It predicts and scores, so it lives above ``infer`` and ``eval``.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import typer

from psg4d.data.schema import SceneGraph4D
from psg4d.errors import ConfigError, DataError
from psg4d.eval.metric import evaluate
from psg4d.infer.ranking import KEEP_KNOWN, RANKING_FILE, RankingWeights, choose_unknown_margin, ranking_record
from psg4d.utils.io import atomic_write_json, check_output_file

if TYPE_CHECKING:  # torch only when predicting
    from psg4d.infer.predictor import Predictor, PredictorConfig, ScoredCandidates

log = logging.getLogger(__name__)

QUALITY_GRID = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)
PRESENCE_GRID = (0.0, 0.5, 1.0, 2.0, 4.0)


def objective(row: dict) -> float:
    """What the weights are chosen by: the mean of the three numbers the 4D-LLM is judged on."""
    return (row["pvsg_R@50"] + row["pvsg_mR@50"] + row["volumetric_R@50"]) / 3


def scores(graphs: Sequence[SceneGraph4D], truth: dict[str, SceneGraph4D]) -> dict[str, float]:
    """R@50 and mR@50 under both protocols, and the :func:`objective`."""
    row: dict[str, float] = {}
    for protocol in ("pvsg", "volumetric"):
        res = evaluate(list(graphs), truth, protocol=protocol, ks=(50,))
        row[f"{protocol}_R@50"] = round(float(res["R@50"]), 3)
        row[f"{protocol}_mR@50"] = round(float(res["mR@50"]), 3)
    row["objective"] = round(objective(row), 3)
    return row


def tune(predictor: "Predictor", scored: "Sequence[ScoredCandidates]", truth: dict[str, SceneGraph4D], *,
         quality_grid: Sequence[float] = QUALITY_GRID, presence_grid: Sequence[float] = PRESENCE_GRID,
         source: str = "validation") -> tuple[RankingWeights, list[dict]]:
    """The best weights of the grid on ``scored`` (module docstring) and the table of every pair."""
    table: list[dict] = []
    best, best_key = None, None
    for q in quality_grid:
        for p in presence_grid:
            w = RankingWeights(quality=q, presence=p, chosen_on=source)
            row = {"quality": q, "presence": p, **scores([predictor.rank(s, w) for s in scored], truth)}
            table.append(row)
            key = (row["objective"], -(q + p))
            if best_key is None or key > best_key:
                best, best_key = w, key
    assert best is not None, "empty grid"
    return best, table


def tune_checkpoint(ckpt: Path, data: Path, split: str = "val", *, limit: int | None = None,
                    out: Path | None = None, overwrite: bool = False,
                    config: "PredictorConfig | None" = None) -> tuple[RankingWeights, dict, dict]:
    """Choose ``ckpt``'s ranking weights on ``split`` of ``data`` and write them to ``out`` (default
    ``ckpt/ranking.json``); returns the weights, their validation row and the text-only row.
    ``config``: the predictor settings the videos are read with (e.g. a token limit, the chain's
    naming vocabulary), as the predictions the weights will rank."""
    from tqdm import tqdm

    from psg4d.data.readers import open_dataset
    from psg4d.families import LLM_KIND, require_family
    from psg4d.infer.predictor import Predictor
    from psg4d.model.psg4d_llm import PSG4DModel

    if split == "test":
        raise ConfigError("--split test: ranking weights are chosen on a validation split; the test split "
                          "only scores them (BENCHMARKS.md, fair protocol)")
    target = out or ckpt / RANKING_FILE
    if target.exists() and not overwrite:
        raise ConfigError(f"{target} exists (weights chosen earlier); pass --overwrite to replace it")
    check_output_file(target)
    reader = open_dataset(data)
    if split not in reader.splits:
        raise DataError(data, f"no split {split!r}; the dataset has {', '.join(reader.splits)}")
    ids = reader.video_ids(split)[:limit] if limit else reader.video_ids(split)
    if not ids:
        raise DataError(data, f"split {split!r} has no videos")
    require_family(ckpt, LLM_KIND, "psg4d tune-ranking (it weighs the LLM's text scores)")
    # weights already beside the checkpoint would rank the candidates: start from the text alone
    predictor = Predictor(model=PSG4DModel.from_pretrained(ckpt), config=config, ranking=RankingWeights())
    scored, truth = [], {}
    for vid in tqdm(ids, desc="candidates", unit="video"):
        scored.append(predictor.score_candidates(reader.read_video(vid)))
        truth[vid] = reader.read_graph(vid)
    source = f"{split} split of {data.resolve()} ({len(ids)} videos)"
    best, table = tune(predictor, scored, truth, source=source)
    chosen = next(r for r in table if (r["quality"], r["presence"]) == (best.quality, best.presence))
    extra = {}
    if predictor.model.config.chain_prob > 0:  # trained on both texts: --mode auto's choice too
        extra["mode"], gate = choose_mode(predictor, best, chosen, [reader.read_video(v) for v in ids], truth, source)
        extra.update(gate)
    atomic_write_json(target, ranking_record(best, table, data=str(data.resolve()), split=split, videos=len(ids),
                                             objective="mean of pvsg R@50, pvsg mR@50, volumetric R@50", **extra),
                      indent=1)
    log.info("ranking weights: quality %s, presence %s (objective %.2f, text only %.2f) -> %s",
             best.quality, best.presence, chosen["objective"], table[0]["objective"], target)
    return best, chosen, table[0]


def choose_mode(predictor: "Predictor", weights: RankingWeights, direct: dict, videos, truth: dict[str, SceneGraph4D],
                source: str) -> tuple[dict, dict]:
    """For a model trained on both texts: the chained prediction of ``videos`` gets its own
    ranking weights, chosen on them as the direct ones were (:func:`tune`), and with an attribute
    head its unknown-object margin first (:func:`~psg4d.infer.ranking.choose_unknown_margin`, on
    the margins of the objects' readings). Its best row against the direct one's validation row ``direct``
    decides what ``--mode auto`` predicts with (ties: direct). ``weights``: the direct ones (kept
    for the record). -> ``(the mode record, {"chain_ranking": ..., "unknown_margin": ...})``."""
    from tqdm import tqdm

    from psg4d.infer.chain import ChainPredictor

    config = replace(predictor.config, mode="chain")
    chain = ChainPredictor(model=predictor.model, config=config)
    scored = [chain.score_candidates(v) for v in tqdm(videos, desc="chain", unit="video")]
    extra: dict = {}
    if predictor.model.attribute_head is not None:
        # the margin that keeps KEEP_KNOWN of these (training-category) objects known; the chain is
        # then named under it (names are decided when it is ranked)
        margins = chain.naming.gate_margins(
            pair for s in scored for pair in zip(s.extra["written"], s.extra["read"]))
        margin = choose_unknown_margin(margins)
        extra["unknown_margin"] = {"margin": margin, "keep": KEEP_KNOWN, "objects": len(margins), "chosen_on": source}
        log.info("unknown-object margin %.3f: keeps %.0f %% of %d validation objects known", margin,
                 100 * KEEP_KNOWN, len(margins))
        chain = ChainPredictor(model=predictor.model, config=replace(config, unknown_margin=margin))
    best, table = tune(chain, scored, truth, source=source)
    row = next(r for r in table if (r["quality"], r["presence"]) == (best.quality, best.presence))
    extra["chain_ranking"] = ranking_record(best, table)
    pick = "chain" if row["objective"] > direct["objective"] else "direct"
    log.info("--mode auto: %s (validation objective direct %.2f, chain %.2f with quality %s, presence %s)", pick,
             direct["objective"], row["objective"], best.quality, best.presence)
    return {"chosen": pick, "chosen_on": source, "direct": direct, "chain": row}, extra


def tune_ranking_command(
    ckpt: Path = typer.Option(..., "--ckpt", help="Checkpoint folder written by training."),
    data: Path = typer.Option(..., "--data", help="Dataset folder (any supported format)."),
    split: str = typer.Option("val", "--split", help="A validation split (never the test split)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use the first N videos of the split."),
    out: Optional[Path] = typer.Option(None, "--out", help=f"Where to write the weights (default CKPT/{RANKING_FILE})."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing ranking file."),
) -> None:
    """Choose the ranking weights (text probability, tube quality, co-presence) on a validation split."""
    best, chosen, text_only = tune_checkpoint(ckpt, data, split, limit=limit, out=out, overwrite=overwrite)
    typer.echo(f"ranking weights: quality {best.quality}, presence {best.presence} -> {out or ckpt / RANKING_FILE}")
    typer.echo(f"{best.chosen_on}: objective {chosen['objective']:.2f} (text only {text_only['objective']:.2f}); "
               f"pvsg R@50 {chosen['pvsg_R@50']:.2f} (text only {text_only['pvsg_R@50']:.2f})")
