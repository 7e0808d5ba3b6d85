"""``psg4d eval``: score predicted scene graphs against ground truth, or predict with a checkpoint first
(:class:`EvalRequest`, :func:`run_eval`; the command is one call of it).

Scoring is :mod:`psg4d.eval`'s; predicting is :mod:`psg4d.infer`'s. This command combines the
two, so it lives above both (``eval`` depends on ``data`` only).
"""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Optional

import typer

from psg4d.data.schema import SceneGraph4D, iter_scene_graphs, save_scene_graphs
from psg4d.errors import ConfigError
from psg4d.eval.automap import auto_map_predictions
from psg4d.eval.labelmap import LabelMap
from psg4d.eval.metric import PROTOCOLS, evaluate, summary_table
from psg4d.eval.segmentation import SegmentationQuality
from psg4d.eval.sources import load_ground_truth
from psg4d.eval.subsets import ZERO_SHOT_MODES, load_zero_shot
from psg4d.eval.video import require_tubes
from psg4d.utils.io import atomic_write_json, check_output_file

log = logging.getLogger(__name__)


def _predictions(
    pred: Path | None, ckpt: Path | None, data: Path | None, split: str | None, limit: int | None = None,
    threads: int | None = None, mode: str = "auto",
) -> Iterable[SceneGraph4D]:
    if pred is not None:
        graphs = _with_tubes(iter_scene_graphs(pred), pred)
        return graphs if limit is None else itertools.islice(graphs, limit)
    if data is None or split is None:
        raise ConfigError("--ckpt needs --data DIR and --split S to know which videos to predict")
    from psg4d.families import PredictOptions
    from psg4d.infer.predictor_factory import predict_split  # torch only when predicting

    return predict_split(ckpt, data, split, limit=limit, progress=True,
                         options=PredictOptions(threads=threads, mode=mode))


def _with_tubes(graphs: Iterable[SceneGraph4D], path: Path) -> Iterator[SceneGraph4D]:
    """``graphs``, refusing (naming the file) an object in a relation without a mask tube: a file
    that lost its ``tube`` keys would otherwise score as empty masks."""
    for g in graphs:
        require_tubes(g, f"{path}: video {g.video_id!r}")
        yield g


def _label_map_file(value: str) -> LabelMap:
    """``--label-map PATH``: the explicit map (anything but ``auto`` must be an existing file)."""
    if not Path(value).is_file():
        raise ConfigError(f"--label-map must be 'auto' or a label-map JSON file, got {value!r} (no such file)")
    return LabelMap.load(value)


@dataclass(frozen=True, kw_only=True)
class EvalRequest:
    """One ``psg4d eval`` call (see the command's help for each flag): ``pred`` or ``ckpt`` (with
    ``data`` and ``split``), scored against ``gt`` (default: ``data``)."""

    pred: Path | None = None
    gt: Path | None = None
    protocol: str = "pvsg"
    graph_constraint: bool = False
    label_map: str | None = None  # "auto" or a label-map JSON file
    split: str | None = None
    out: Path | None = None
    ckpt: Path | None = None
    data: Path | None = None
    limit: int | None = None
    save_pred: Path | None = None
    threads: int | None = None
    mode: str = "auto"
    zero_shot_train: Path | None = None
    zero_shot_split: str | None = None
    zero_shot: str | None = None

    def check(self) -> Path:
        """Refuse impossible combinations before anything is read; returns the ground truth's path."""
        if (self.pred is None) == (self.ckpt is None):
            raise ConfigError("give exactly one of --pred FILE or --ckpt DIR (with --data and --split)")
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        if self.gt is None and self.data is None:
            raise ConfigError("give --gt (a scene-graph file or dataset folder)")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be positive, got {self.limit}")
        if self.save_pred is not None and self.ckpt is None:
            raise ConfigError("--save-pred needs --ckpt (with --pred the predictions are already a file)")
        for target in (self.out, self.save_pred):
            if target is not None:
                check_output_file(target)
        if self.zero_shot_train is None and (self.zero_shot is not None or self.zero_shot_split is not None):
            raise ConfigError("--zero-shot and --zero-shot-split need --zero-shot-train (the training scene graphs)")
        if self.zero_shot is not None and self.zero_shot not in ZERO_SHOT_MODES:
            raise ConfigError(f"--zero-shot must be one of {', '.join(ZERO_SHOT_MODES)}, got {self.zero_shot!r}")
        return self.gt if self.gt is not None else self.data


def run_eval(req: EvalRequest) -> dict[str, Any]:
    """Score (predicting first with ``req.ckpt``) and return the metrics; ``req.out``: also as JSON."""
    gt = req.check()
    # read before predicting, so that a bad training path fails before minutes of inference
    zs = None
    if req.zero_shot_train is not None:
        zs = load_zero_shot(req.zero_shot_train, split=req.zero_shot_split, by=req.zero_shot or "triplets")
    gts, vocab = load_ground_truth(gt, req.split, split_is_for_gt=req.ckpt is None, limit=req.limit)
    lm = _label_map_file(req.label_map) if req.label_map is not None and req.label_map != "auto" else None
    if req.mode not in ("direct", "chain", "auto"):
        raise ConfigError(f"--mode must be direct, chain or auto, got {req.mode!r}")
    preds = _predictions(req.pred, req.ckpt, req.data, req.split, req.limit, req.threads, req.mode)
    if req.save_pred is not None:
        preds = list(preds)
        save_scene_graphs(req.save_pred, preds)
        log.info("wrote %d predictions to %s", len(preds), req.save_pred)
    mapping = None
    if req.label_map == "auto":  # the predictions' free text onto the ground truth's vocabulary, as an explicit map
        preds, gts, lm, mapping = auto_map_predictions(preds, gts, vocab)
    seg = SegmentationQuality(label_map=lm)
    # predictions read from a file were validated as they were read (the errors name file and line),
    # and so was the ground truth: the metric need not validate them again
    result = evaluate(preds, gts, protocol=req.protocol, graph_constraint=req.graph_constraint, label_map=lm,
                      zero_shot=zs, also=[seg], validated=req.pred is not None, **vocab)
    if seg.scored:
        result["segmentation"] = seg.compute()
    else:
        log.info("segmentation quality not reported: the predictions or the ground truth have no mask tubes")
    zs_train = req.zero_shot_train
    result["inputs"] = {
        "pred": str(req.pred) if req.pred is not None else None,
        "ckpt": str(req.ckpt) if req.ckpt is not None else None,
        "gt": str(gt),
        "split": req.split,
        "zero_shot_train": str(zs_train) if zs_train is not None else None,
        "zero_shot_split": (req.zero_shot_split or "train") if zs_train is not None and zs_train.is_dir() else None,
        "label_map": str(req.label_map) if req.label_map is not None else None,
    }
    if mapping is not None:
        result["label_mapping"] = mapping
    if req.out is not None:
        atomic_write_json(req.out, result, indent=2)
        log.info("wrote %s", req.out)
    return result


def eval_command(
    pred: Optional[Path] = typer.Option(None, "--pred", help="Predicted scene graphs (.jsonl or .json)."),
    gt: Optional[Path] = typer.Option(
        None, "--gt", help="Ground truth: a scene-graph file or a dataset folder (default: --data)."
    ),
    protocol: str = typer.Option(
        "pvsg", "--protocol", help="pvsg (published, OpenPVSG's) or volumetric (strict, recommended)."
    ),
    graph_constraint: bool = typer.Option(
        False, "--graph-constraint",
        help="Plain R@K keys with the graph constraint (best predicate per subject-object pair); both are reported.",
    ),
    label_map: Optional[str] = typer.Option(
        None, "--label-map", help='auto (map free text onto the ground truth\'s vocabulary: exact, normalised, '
        'then sentence-embedding match) or a JSON file {"objects": {free: vocab}, "predicates": {free: vocab}}.'
    ),
    split: Optional[str] = typer.Option(None, "--split", help="Split of a dataset folder (--gt / --data)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the full metrics (per predicate) as JSON."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON instead of the table."),
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="Predict with this checkpoint instead of --pred."),
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset folder to predict on (with --ckpt)."),
    limit: Optional[int] = typer.Option(
        None, "--limit", help="Score only the first N videos (of the split, and of --pred in file order)."
    ),
    save_pred: Optional[Path] = typer.Option(
        None, "--save-pred", help="With --ckpt: also write the predictions (.jsonl), e.g. to score another protocol."
    ),
    threads: Optional[int] = typer.Option(
        None, "--threads", help="With --ckpt: torch threads (default: the CPUs other processes leave free)."
    ),
    mode: str = typer.Option(
        "auto", "--mode", help="With --ckpt: direct, chain (chained inference) or auto (the better one for the checkpoint).",
    ),
    zero_shot_train: Optional[Path] = typer.Option(
        None, "--zero-shot-train", help="Training scene graphs (file or dataset folder): also report zero-shot zR@K."
    ),
    zero_shot_split: Optional[str] = typer.Option(
        None, "--zero-shot-split", help="Split of a --zero-shot-train dataset folder (default: train)."
    ),
    zero_shot: Optional[str] = typer.Option(
        None, "--zero-shot", help="triplets (default): GT triplets unseen in training; categories: GT relations "
        "whose subject or object category is unseen.",
    ),
) -> None:
    """Triplet recall R@20/50/100 and mR@20/50/100 of predicted 4D scene graphs, with and without the
    graph constraint, weak (vIoU >= 0.1) and pair (any predicate) recall, and zero-shot zR@K."""
    result = run_eval(EvalRequest(
        pred=pred, gt=gt, protocol=protocol, graph_constraint=graph_constraint, label_map=label_map, split=split,
        out=out, ckpt=ckpt, data=data, limit=limit, save_pred=save_pred, threads=threads, mode=mode,
        zero_shot_train=zero_shot_train, zero_shot_split=zero_shot_split, zero_shot=zero_shot,
    ))
    typer.echo(json.dumps(result, indent=2) if as_json else summary_table(result))
