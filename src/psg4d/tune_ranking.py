"""``psg4d tune-ranking``: a checkpoint's ranking weights, chosen on a validation split.

Every validation video is predicted once up to its ranking
(:meth:`~psg4d.infer.predictor.Predictor.score_candidates`); each pair of weights of the grid
then ranks the same candidates (:mod:`psg4d.infer.ranking`) and is scored under both protocols.
The pair with the best mean of pvsg R@50, pvsg mR@50 and volumetric R@50 (the three numbers the
4D-LLM is judged on) wins; ties go to the smaller weights (text only first). The weights, every
pair tried and where they were measured go to ``ranking.json`` in the checkpoint folder, which
every predictor of that checkpoint then reads.

It predicts and scores, so it lives above ``infer`` and ``eval``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import typer

from psg4d.data.schema import SceneGraph4D
from psg4d.errors import ConfigError, DataError
from psg4d.eval.metric import evaluate
from psg4d.infer.ranking import RANKING_FILE, RankingWeights, ranking_record
from psg4d.utils.io import atomic_write_json, check_output_file

if TYPE_CHECKING:  # torch only when predicting
    from psg4d.infer.predictor import Predictor, ScoredCandidates

log = logging.getLogger(__name__)

QUALITY_GRID = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)
PRESENCE_GRID = (0.0, 0.5, 1.0, 2.0, 4.0)


def objective(row: dict) -> float:
    """What the weights are chosen by: the mean of the three numbers the 4D-LLM is judged on."""
    return (row["pvsg_R@50"] + row["pvsg_mR@50"] + row["volumetric_R@50"]) / 3


def tune(predictor: "Predictor", scored: "Sequence[ScoredCandidates]", truth: dict[str, SceneGraph4D], *,
         quality_grid: Sequence[float] = QUALITY_GRID, presence_grid: Sequence[float] = PRESENCE_GRID,
         source: str = "validation") -> tuple[RankingWeights, list[dict]]:
    """The best weights of the grid on ``scored`` (module docstring) and the table of every pair."""
    table: list[dict] = []
    best, best_key = None, None
    for q in quality_grid:
        for p in presence_grid:
            w = RankingWeights(quality=q, presence=p, chosen_on=source)
            graphs = [predictor.rank(s, w) for s in scored]
            row = {"quality": q, "presence": p}
            for protocol in ("pvsg", "volumetric"):
                res = evaluate(graphs, truth, protocol=protocol, ks=(50,))
                row[f"{protocol}_R@50"] = round(float(res["R@50"]), 3)
                row[f"{protocol}_mR@50"] = round(float(res["mR@50"]), 3)
            row["objective"] = round(objective(row), 3)
            table.append(row)
            key = (row["objective"], -(q + p))
            if best_key is None or key > best_key:
                best, best_key = w, key
    assert best is not None, "empty grid"
    return best, table


def tune_checkpoint(ckpt: Path, data: Path, split: str = "val", *, limit: int | None = None,
                    out: Path | None = None, overwrite: bool = False) -> tuple[RankingWeights, dict, dict]:
    """Choose ``ckpt``'s ranking weights on ``split`` of ``data`` and write them to ``out`` (default
    ``ckpt/ranking.json``); returns the weights, their validation row and the text-only row."""
    from tqdm import tqdm

    from psg4d.data.readers import open_dataset
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
    # weights already beside the checkpoint would rank the candidates: start from the text alone
    predictor = Predictor(model=PSG4DModel.from_pretrained(ckpt), ranking=RankingWeights())
    scored, truth = [], {}
    for vid in tqdm(ids, desc="candidates", unit="video"):
        scored.append(predictor.score_candidates(reader.read_video(vid)))
        truth[vid] = reader.read_graph(vid)
    best, table = tune(predictor, scored, truth, source=f"{split} split of {data.resolve()} ({len(ids)} videos)")
    chosen = next(r for r in table if (r["quality"], r["presence"]) == (best.quality, best.presence))
    atomic_write_json(target, ranking_record(best, table, data=str(data.resolve()), split=split, videos=len(ids),
                                             objective="mean of pvsg R@50, pvsg mR@50, volumetric R@50"), indent=1)
    log.info("ranking weights: quality %s, presence %s (objective %.2f, text only %.2f) -> %s",
             best.quality, best.presence, chosen["objective"], table[0]["objective"], target)
    return best, chosen, table[0]


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
