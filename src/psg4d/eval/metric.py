"""Triplet recall of 4D scene graphs: R@K, mR@K and per-predicate recall.

:class:`SceneGraphRecall` is a streaming metric (``update`` a video at a time,
``compute`` at the end) whose state is integer sums: hits per (predicate, K),
GT relations per predicate, and a few counters. Sums add across processes, so
under ``torch.distributed`` every rank updates on its share of the videos and
:meth:`SceneGraphRecall.compute` all-reduces before turning sums into ratios.

Two protocols (see their modules for the exact rules):

* ``pvsg`` (:mod:`psg4d.eval.pvsg`): OpenPVSG's evaluator, behind the published
  PSG4D / PVSG numbers. Use it to compare with papers.
* ``volumetric`` (:mod:`psg4d.eval.volumetric`): strict tube vIoU, temporal IoU
  and one-to-one matching. Recommended for new work.

Recalls are reported in percent (0-100), as published tables print them.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from psg4d.data.schema import SceneGraph4D
from psg4d.errors import ConfigError, DataError
from psg4d.eval.labelmap import IDENTITY, LabelMap, normalize_label
from psg4d.eval.pvsg import pvsg_hit_ranks
from psg4d.eval.video import PreparedVideo, prepare_video
from psg4d.eval.volumetric import volumetric_hit_ranks

log = logging.getLogger(__name__)

PROTOCOLS = ("pvsg", "volumetric")

# counters kept next to the per-predicate sums (all additive)
_COUNTERS = (
    "videos",
    "missing_predictions",
    "unmapped_objects",
    "checked_objects",
    "unmapped_predicates",
    "checked_predicates",
    "object_vocab_known",
    "predicate_vocab_known",
)
_MAX_EXAMPLES = 20


@dataclass
class RecallState:
    """The metric's sums (after reduction across processes when one is running)."""

    predicates: list[str]
    hits: np.ndarray  # int64 [P, len(ks)]
    gt: np.ndarray  # int64 [P]
    counters: dict[str, int]
    missing: list[str] = field(default_factory=list)
    unmapped_examples: list[str] = field(default_factory=list)


def _dist_world() -> Any:
    """``torch.distributed`` when a process group with more than one rank is running, else None.

    Looked up in ``sys.modules`` rather than imported: a process that never imported
    torch has no process group, and importing torch costs seconds in the CLI.
    """
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist
    return None


class SceneGraphRecall:
    """Streaming R@K / mR@K of ranked 4D scene-graph predictions.

    ``protocol``: ``"pvsg"`` (published) or ``"volumetric"`` (strict).
    ``ks``: the K of R@K. ``graph_constraint``: keep only the best-scoring
    predicate per (subject, object) pair before the top-K cut (the published
    ``pvsg`` numbers use ``False``).

    Thresholds: ``iou_threshold`` is the mask-overlap test (``pvsg``: per-frame
    mask IoU of subject and object; ``volumetric``: tube vIoU of subject and
    object); ``viou_threshold`` is ``pvsg``'s relation vIoU test;
    ``tiou_threshold`` is ``volumetric``'s temporal IoU test.

    ``predicates``/``objects``: the vocabularies. The predicate list fixes the
    state's layout (needed for a plain all-reduce; without it the vocabularies
    of the ranks are gathered and merged first); both decide which predicted
    labels are *unmapped*. Without them the GT graphs' ``predicate_vocab`` /
    ``object_vocab`` are used where present. ``label_map`` maps free-text
    predicted labels into the vocabulary; labels are compared after case and
    whitespace normalisation.
    """

    def __init__(
        self,
        *,
        protocol: str = "pvsg",
        ks: Sequence[int] = (20, 50, 100),
        graph_constraint: bool = False,
        iou_threshold: float = 0.5,
        viou_threshold: float = 0.5,
        tiou_threshold: float = 0.5,
        predicates: Sequence[str] | None = None,
        objects: Sequence[str] | None = None,
        label_map: LabelMap | None = None,
    ):
        if protocol not in PROTOCOLS:
            raise ConfigError(f"unknown evaluation protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
        kk = sorted({int(k) for k in ks})
        if not kk or kk[0] <= 0:
            raise ConfigError(f"ks must be positive integers, got {list(ks)}")
        for name, val in (("iou_threshold", iou_threshold), ("viou_threshold", viou_threshold),
                          ("tiou_threshold", tiou_threshold)):
            if not (0.0 < float(val) <= 1.0):
                raise ConfigError(f"{name} must be in (0, 1], got {val}")
        self.protocol = protocol
        self.ks = tuple(kk)
        self.graph_constraint = bool(graph_constraint)
        self.iou_threshold = float(iou_threshold)
        self.viou_threshold = float(viou_threshold)
        self.tiou_threshold = float(tiou_threshold)
        self.label_map = label_map or IDENTITY
        self.fixed_predicates = None if predicates is None else self._dedup([normalize_label(p) for p in predicates])
        self.object_vocab = None if objects is None else {normalize_label(o) for o in objects}
        self._k_arr = np.asarray(self.ks, dtype=np.int64)
        self.reset()

    @staticmethod
    def _dedup(names: list[str]) -> list[str]:
        return list(dict.fromkeys(names))

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        names = list(self.fixed_predicates or [])
        self._index: dict[str, int] = {p: i for i, p in enumerate(names)}
        self._hits = np.zeros((len(names), len(self.ks)), dtype=np.int64)
        self._gt = np.zeros(len(names), dtype=np.int64)
        self._counters = dict.fromkeys(_COUNTERS, 0)
        self._missing: list[str] = []
        self._examples: set[str] = set()

    def _predicate_rows(self, names: Iterable[str], where: str) -> np.ndarray:
        out = []
        for p in names:
            i = self._index.get(p)
            if i is None:
                if self.fixed_predicates is not None:
                    raise DataError(where, f"predicate {p!r} is not in the evaluation's predicate list")
                i = self._index[p] = len(self._index)
                self._hits = np.vstack([self._hits, np.zeros((1, len(self.ks)), dtype=np.int64)])
                self._gt = np.append(self._gt, 0)
            out.append(i)
        return np.asarray(out, dtype=np.int64)

    # ------------------------------------------------------------------ update
    def hit_ranks(self, video: PreparedVideo) -> np.ndarray:
        """Per GT relation of a prepared video, the rank at which it is hit (``NO_HIT`` if never)."""
        if self.protocol == "pvsg":
            return pvsg_hit_ranks(v=video, mask_iou_threshold=self.iou_threshold, viou_threshold=self.viou_threshold)
        return volumetric_hit_ranks(v=video, iou_threshold=self.iou_threshold, tiou_threshold=self.tiou_threshold)

    def update(self, pred: SceneGraph4D | None, gt: SceneGraph4D) -> np.ndarray:
        """Score one video. ``pred=None``: no prediction for it (all its GT relations are misses).

        Returns the hit ranks of the video's GT relations (for inspection).
        """
        where = f"ground truth for video {gt.video_id!r}"
        if self.fixed_predicates is None and gt.predicate_vocab:
            self._predicate_rows(sorted(normalize_label(p) for p in gt.predicate_vocab), where)
        predicate_vocab: set[str] | None
        if self.fixed_predicates is not None:
            predicate_vocab = set(self.fixed_predicates)
        elif gt.predicate_vocab:
            predicate_vocab = {normalize_label(p) for p in gt.predicate_vocab}
        else:
            predicate_vocab = None
        object_vocab = self.object_vocab
        if object_vocab is None and gt.object_vocab:
            object_vocab = {normalize_label(o) for o in gt.object_vocab}

        video = prepare_video(
            pred,
            gt,
            max_k=self.ks[-1],
            graph_constraint=self.graph_constraint,
            label_map=self.label_map,
            object_vocab=object_vocab,
            predicate_vocab=predicate_vocab,
        )
        rows = self._predicate_rows(video.gt_predicates, where)
        ranks = self.hit_ranks(video)
        np.add.at(self._gt, rows, 1)
        np.add.at(self._hits, rows, (ranks[:, None] < self._k_arr[None, :]).astype(np.int64))

        c = self._counters
        c["videos"] += 1
        if pred is None:
            c["missing_predictions"] += 1
            self._missing.append(gt.video_id)
        if video.unmapped_objects is not None:
            c["unmapped_objects"] += video.unmapped_objects
            c["checked_objects"] += video.checked_objects
            c["object_vocab_known"] += 1
        if video.unmapped_predicates is not None:
            c["unmapped_predicates"] += video.unmapped_predicates
            c["checked_predicates"] += video.checked_predicates
            c["predicate_vocab_known"] += 1
        if len(self._examples) < _MAX_EXAMPLES:
            self._examples.update(sorted(video.unmapped_examples)[: _MAX_EXAMPLES - len(self._examples)])
        return ranks

    @property
    def missing_predictions(self) -> list[str]:
        """Videos of this process updated without a prediction."""
        return list(self._missing)

    # ------------------------------------------------------------------ reduce
    def _local_state(self) -> RecallState:
        return RecallState(
            predicates=list(self._index),
            hits=self._hits.copy(),
            gt=self._gt.copy(),
            counters=dict(self._counters),
            missing=list(self._missing),
            unmapped_examples=sorted(self._examples),
        )

    def sync(self) -> RecallState:
        """The state summed over all processes of the running ``torch.distributed`` group (or the
        local state when none runs). Collective: every rank must call it. The local state is
        left as it is, so ``update`` can go on and ``compute`` can be called again."""
        state = self._local_state()
        dist = _dist_world()
        if dist is None:
            return state
        import torch

        gathered: list[Any] = [None] * dist.get_world_size()
        fixed = self.fixed_predicates is not None
        dist.all_gather_object(gathered, (None if fixed else state.predicates, state.missing, state.unmapped_examples))
        if not fixed:
            # ranks saw different predicates in different orders: lay every rank's sums out on the union
            names = sorted({p for names, _, _ in gathered for p in names})
            pos = {p: i for i, p in enumerate(names)}
            idx = np.asarray([pos[p] for p in state.predicates], dtype=np.int64)
            hits = np.zeros((len(names), len(self.ks)), dtype=np.int64)
            gt = np.zeros(len(names), dtype=np.int64)
            hits[idx] = state.hits
            gt[idx] = state.gt
            state.predicates, state.hits, state.gt = names, hits, gt
        P, nk = state.hits.shape
        flat = np.concatenate([state.hits.ravel(), state.gt, np.asarray([state.counters[k] for k in _COUNTERS])])
        device = torch.device("cpu")
        if dist.get_backend() == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        buf = torch.from_numpy(flat.astype(np.int64)).to(device)
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        out = buf.cpu().numpy()
        state.hits = out[: P * nk].reshape(P, nk)
        state.gt = out[P * nk : P * nk + P]
        state.counters = {k: int(v) for k, v in zip(_COUNTERS, out[P * nk + P :])}
        state.missing = sorted({m for _, ms, _ in gathered for m in ms})
        state.unmapped_examples = sorted({e for _, _, es in gathered for e in es})[:_MAX_EXAMPLES]
        return state

    # ------------------------------------------------------------------ result
    def compute(self) -> dict[str, Any]:
        """R@K, mR@K (percent), per-predicate recall and bookkeeping, as a JSON-ready dict."""
        return self.format(self.sync())

    def format(self, state: RecallState) -> dict[str, Any]:
        total = int(state.gt.sum())
        valid = state.gt > 0
        out: dict[str, Any] = {"protocol": self.protocol, "ks": list(self.ks)}
        for j, k in enumerate(self.ks):
            out[f"R@{k}"] = 100.0 * float(state.hits[:, j].sum()) / total if total else 0.0
        for j, k in enumerate(self.ks):
            per = state.hits[valid, j] / state.gt[valid]
            out[f"mR@{k}"] = 100.0 * float(per.mean()) if per.size else 0.0
        order = sorted(range(len(state.predicates)), key=lambda i: state.predicates[i])
        per_predicate: dict[str, dict[str, Any]] = {}
        for i in order:
            n = int(state.gt[i])
            entry: dict[str, Any] = {"gt": n}
            for j, k in enumerate(self.ks):
                entry[f"hits@{k}"] = int(state.hits[i, j])
                entry[f"R@{k}"] = 100.0 * int(state.hits[i, j]) / n if n else None
            per_predicate[state.predicates[i]] = entry
        c = state.counters
        videos = c["videos"]
        out.update(
            {
                "per_predicate": per_predicate,
                "num_videos": videos,
                "num_gt_relations": total,
                "num_missing_predictions": c["missing_predictions"],
                "missing_predictions": state.missing,
                "unmapped_labels": {
                    # a count is only meaningful where every video had a vocabulary to check against
                    "objects": c["unmapped_objects"] if videos and c["object_vocab_known"] == videos else None,
                    "predicates": c["unmapped_predicates"]
                    if videos and c["predicate_vocab_known"] == videos
                    else None,
                    "objects_checked": c["checked_objects"],
                    "predicates_checked": c["checked_predicates"],
                    "examples": state.unmapped_examples,
                },
                "settings": {
                    "graph_constraint": self.graph_constraint,
                    "iou_threshold": self.iou_threshold,
                    "viou_threshold": self.viou_threshold,
                    "tiou_threshold": self.tiou_threshold,
                    "label_map": bool(self.label_map.objects or self.label_map.predicates),
                },
            }
        )
        if c["unmapped_objects"] or c["unmapped_predicates"]:
            log.warning(
                "%d predicted object labels and %d predicate labels are outside the vocabulary and score as wrong "
                "(give a label map to map free text)",
                c["unmapped_objects"],
                c["unmapped_predicates"],
            )
        return out


def evaluate(
    preds: Iterable[SceneGraph4D],
    gts: Iterable[SceneGraph4D] | Mapping[str, SceneGraph4D],
    *,
    protocol: str = "pvsg",
    ks: Sequence[int] = (20, 50, 100),
    **options: Any,
) -> dict[str, Any]:
    """Score predictions against ground truth in one call (see :class:`SceneGraphRecall` for ``options``).

    Predictions are streamed; a prediction for a video not in the ground truth, or
    two predictions for one video, raise :class:`DataError`. GT videos without a
    prediction count as all misses and are listed in ``missing_predictions``.
    """
    if isinstance(gts, Mapping):
        truth = dict(gts)
    else:
        truth = {}
        for g in gts:
            if g.video_id in truth:
                raise DataError(f"video {g.video_id!r}", "appears twice in the ground truth")
            truth[g.video_id] = g
    metric = SceneGraphRecall(protocol=protocol, ks=ks, **options)
    seen: set[str] = set()
    for p in preds:
        vid = p.video_id
        if vid not in truth:
            raise DataError(f"prediction for video {vid!r}", "this video is not in the ground truth")
        if vid in seen:
            raise DataError(f"prediction for video {vid!r}", "the video is predicted twice")
        seen.add(vid)
        metric.update(p, truth[vid])
    for vid, g in truth.items():
        if vid not in seen:
            metric.update(None, g)
    if metric.missing_predictions:
        log.warning("%d ground-truth videos have no prediction (scored as misses)", len(metric.missing_predictions))
    return metric.compute()


def summary_table(result: Mapping[str, Any]) -> str:
    """A fixed-width text table of R@K and mR@K."""
    ks = result["ks"]
    head = f"{'protocol':<12}" + "".join(f"{'R@' + str(k):>9}" for k in ks) + "".join(f"{'mR@' + str(k):>9}" for k in ks)
    row = f"{result['protocol']:<12}" + "".join(f"{result[f'R@{k}']:>9.2f}" for k in ks) + "".join(
        f"{result[f'mR@{k}']:>9.2f}" for k in ks
    )
    lines = [head, row, ""]
    lines.append(
        f"videos {result['num_videos']}  GT relations {result['num_gt_relations']}"
        f"  missing predictions {result['num_missing_predictions']}"
    )
    um = result["unmapped_labels"]
    if um["objects"] or um["predicates"]:
        lines.append(f"unmapped predicted labels: objects {um['objects']}, predicates {um['predicates']}")
    return "\n".join(lines)
