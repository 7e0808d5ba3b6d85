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

Result keys (``compute``/``evaluate``), each for every K of ``ks``:

* ``R@K`` / ``mR@K``: triplet recall / mean recall over predicates; ``per_predicate``.
* ``weak R@K`` / ``weak mR@K``: the same with the protocol's vIoU threshold lowered
  to ``weak_viou_threshold`` (0.1, OpenPVSG's weak recall; ``volumetric``: tube vIoU).
* ``pair R@K``: subject and object found (categories and the protocol's overlap
  tests), any predicate; over the same GT relations as ``R@K``.
* With a ``zero_shot`` subset (:class:`psg4d.eval.subsets.ZeroShot`): ``zR@K``,
  ``weak zR@K``, ``pair zR@K`` over the subset's GT relations only, and
  ``zero_shot = {"subset": description, "num_gt_relations": n}``.

These top-level numbers use the candidate list the metric was configured with:
the graph constraint (best predicate per subject-object pair) when
``graph_constraint=True``, else none. Both are always computed:
``result["no_graph_constraint"]`` and ``result["graph_constraint"]`` hold the
same keys (``R@K`` ... ``pair zR@K``) for each candidate list, so the top-level
numbers equal one of them (named by ``settings.graph_constraint``).
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
from psg4d.eval.pvsg import pvsg_hit_ranks, pvsg_view_ranks
from psg4d.eval.report import recall_block, summary_table, unmapped_warning  # noqa: F401  (summary_table: re-exported)
from psg4d.eval.subsets import ZeroShot
from psg4d.eval.video import KINDS, PreparedVideo, candidate_views, prepare_video
from psg4d.eval.volumetric import volumetric_hit_ranks, volumetric_view_ranks

log = logging.getLogger(__name__)

PROTOCOLS = ("pvsg", "volumetric")
#: the candidate lists scored, in the order of the state's constraint axis (also the result's block names)
CONSTRAINTS = ("no_graph_constraint", "graph_constraint")

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
    # int64 [P, subset, constraint, kind, len(ks)]: subset 0 all GT relations, 1 the zero-shot
    # subset; constraint as CONSTRAINTS; kind as KINDS (strict, weak, pair)
    hits: np.ndarray
    gt: np.ndarray  # int64 [P, subset]
    counters: dict[str, int]
    missing: list[str] = field(default_factory=list)
    # every distinct predicted label outside the vocabulary, "object:<label>" / "predicate:<label>"
    unmapped_labels: list[str] = field(default_factory=list)


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
    ``tiou_threshold`` is ``volumetric``'s temporal IoU test. ``weak_viou_threshold``
    replaces the relation vIoU test (``pvsg``) or the tube vIoU test (``volumetric``)
    for the weak recall.

    ``zero_shot``: also report recall on the GT relations of this subset (``zR@K``).
    ``validated``: every graph passed to :meth:`update` was validated already (``SceneGraph4D.validate``).

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
        weak_viou_threshold: float = 0.1,
        predicates: Sequence[str] | None = None,
        objects: Sequence[str] | None = None,
        label_map: LabelMap | None = None,
        zero_shot: ZeroShot | None = None,
        validated: bool = False,
    ):
        if protocol not in PROTOCOLS:
            raise ConfigError(f"unknown evaluation protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
        kk = sorted({int(k) for k in ks})
        if not kk or kk[0] <= 0:
            raise ConfigError(f"ks must be positive integers, got {list(ks)}")
        for name, val in (("iou_threshold", iou_threshold), ("viou_threshold", viou_threshold),
                          ("tiou_threshold", tiou_threshold), ("weak_viou_threshold", weak_viou_threshold)):
            if not (0.0 < float(val) <= 1.0):
                raise ConfigError(f"{name} must be in (0, 1], got {val}")
        self.protocol = protocol
        self.ks = tuple(kk)
        self.graph_constraint = bool(graph_constraint)
        self.iou_threshold = float(iou_threshold)
        self.viou_threshold = float(viou_threshold)
        self.tiou_threshold = float(tiou_threshold)
        self.weak_viou_threshold = float(weak_viou_threshold)
        if zero_shot is not None and not isinstance(zero_shot, ZeroShot):
            raise ConfigError(f"zero_shot must be a psg4d.eval.subsets.ZeroShot, got {type(zero_shot).__name__}")
        self.zero_shot = zero_shot
        self.label_map = label_map or IDENTITY
        # the caller validated every graph it passes (e.g. on reading the files, where the error can
        # name file and line): checking again would cost a second pass over every mask
        self.validated = bool(validated)
        # a map that was given (even one that maps nothing) changes what the unmapped warning advises
        self.label_map_given = label_map is not None
        self.fixed_predicates = None if predicates is None else self._dedup([normalize_label(p) for p in predicates])
        self.object_vocab = None if objects is None else {normalize_label(o) for o in objects}
        self._k_arr = np.asarray(self.ks, dtype=np.int64)
        self.reset()

    @property
    def _row_shape(self) -> tuple[int, ...]:
        """Shape of one predicate's hit counts: (subset, constraint, kind, K)."""
        return (2, len(CONSTRAINTS), len(KINDS), len(self.ks))

    @staticmethod
    def _dedup(names: list[str]) -> list[str]:
        return list(dict.fromkeys(names))

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        names = list(self.fixed_predicates or [])
        self._index: dict[str, int] = {p: i for i, p in enumerate(names)}
        self._hits = np.zeros((len(names), *self._row_shape), dtype=np.int64)
        self._gt = np.zeros((len(names), 2), dtype=np.int64)
        self._counters = dict.fromkeys(_COUNTERS, 0)
        self._missing: list[str] = []
        # all of them, not a sample: the warning counts distinct labels
        self._unmapped: set[str] = set()

    def _predicate_rows(self, names: Iterable[str], where: str) -> np.ndarray:
        out = []
        for p in names:
            i = self._index.get(p)
            if i is None:
                if self.fixed_predicates is not None:
                    raise DataError(where, f"predicate {p!r} is not in the evaluation's predicate list")
                i = self._index[p] = len(self._index)
                self._hits = np.concatenate([self._hits, np.zeros((1, *self._row_shape), dtype=np.int64)])
                self._gt = np.concatenate([self._gt, np.zeros((1, 2), dtype=np.int64)])
            out.append(i)
        return np.asarray(out, dtype=np.int64)

    # ------------------------------------------------------------------ update
    def hit_ranks(self, video: PreparedVideo) -> np.ndarray:
        """Per GT relation of a prepared video, the rank at which it is hit (``NO_HIT`` if never)."""
        if self.protocol == "pvsg":
            return pvsg_hit_ranks(v=video, mask_iou_threshold=self.iou_threshold, viou_threshold=self.viou_threshold)
        return volumetric_hit_ranks(v=video, iou_threshold=self.iou_threshold, tiou_threshold=self.tiou_threshold)

    def view_ranks(self, video: PreparedVideo, views: Sequence[np.ndarray]) -> np.ndarray:
        """int64 ``[len(views), len(KINDS), R]``: hit ranks per candidate list and test (strict, weak, pair)."""
        if self.protocol == "pvsg":
            return pvsg_view_ranks(video, views, mask_iou_threshold=self.iou_threshold,
                                   viou_threshold=self.viou_threshold, weak_viou_threshold=self.weak_viou_threshold)
        return volumetric_view_ranks(video, views, iou_threshold=self.iou_threshold,
                                     tiou_threshold=self.tiou_threshold, weak_iou_threshold=self.weak_viou_threshold)

    def update(self, pred: SceneGraph4D | None, gt: SceneGraph4D) -> np.ndarray:
        """Score one video. ``pred=None``: no prediction for it (all its GT relations are misses).

        Returns the (strict) hit ranks of the video's GT relations under the configured
        graph constraint (for inspection).
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

        # both candidate lists (with and without the graph constraint) share one preparation
        empty = np.zeros(0, dtype=np.int64)
        cands, views = candidate_views(pred, max_k=self.ks[-1]) if pred is not None else ([], (empty, empty))
        video = prepare_video(
            pred,
            gt,
            validated=self.validated,
            max_k=self.ks[-1],
            graph_constraint=self.graph_constraint,
            label_map=self.label_map,
            object_vocab=object_vocab,
            predicate_vocab=predicate_vocab,
            candidates=cands,
        )
        rows = self._predicate_rows(video.gt_predicates, where)
        ranks = self.view_ranks(video, views)  # [constraint, kind, R]
        hit = (ranks[..., None] < self._k_arr).astype(np.int64).transpose(2, 0, 1, 3)  # [R, constraint, kind, K]
        np.add.at(self._gt[:, 0], rows, 1)
        np.add.at(self._hits[:, 0], rows, hit)
        if self.zero_shot is not None:
            sub = self.zero_shot.mask(gt)
            np.add.at(self._gt[:, 1], rows[sub], 1)
            np.add.at(self._hits[:, 1], rows[sub], hit[sub])

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
        self._unmapped.update(video.unmapped_examples)
        return ranks[int(self.graph_constraint), 0]

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
            unmapped_labels=sorted(self._unmapped),
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
        dist.all_gather_object(gathered, (None if fixed else state.predicates, state.missing, state.unmapped_labels))
        if not fixed:
            # ranks saw different predicates in different orders: lay every rank's sums out on the union
            names = sorted({p for names, _, _ in gathered for p in names})
            pos = {p: i for i, p in enumerate(names)}
            idx = np.asarray([pos[p] for p in state.predicates], dtype=np.int64)
            hits = np.zeros((len(names), *self._row_shape), dtype=np.int64)
            gt = np.zeros((len(names), 2), dtype=np.int64)
            hits[idx] = state.hits
            gt[idx] = state.gt
            state.predicates, state.hits, state.gt = names, hits, gt
        nh, ng = state.hits.size, state.gt.size
        counters = np.asarray([state.counters[k] for k in _COUNTERS])
        flat = np.concatenate([state.hits.ravel(), state.gt.ravel(), counters])
        device = torch.device("cpu")
        if dist.get_backend() == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        buf = torch.from_numpy(flat.astype(np.int64)).to(device)
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        out = buf.cpu().numpy()
        state.hits = out[:nh].reshape(state.hits.shape)
        state.gt = out[nh : nh + ng].reshape(state.gt.shape)
        state.counters = {k: int(v) for k, v in zip(_COUNTERS, out[nh + ng :])}
        state.missing = sorted({m for _, ms, _ in gathered for m in ms})
        state.unmapped_labels = sorted({e for _, _, es in gathered for e in es})
        return state

    # ------------------------------------------------------------------ result
    def compute(self) -> dict[str, Any]:
        """R@K, mR@K (percent), per-predicate recall and bookkeeping, as a JSON-ready dict."""
        return self.format(self.sync())

    def format(self, state: RecallState) -> dict[str, Any]:
        total = int(state.gt[:, 0].sum())
        zs = self.zero_shot is not None
        blocks = {
            name: recall_block(state.hits[:, :, c], state.gt, self.ks, zero_shot=zs)
            for c, name in enumerate(CONSTRAINTS)
        }
        main = int(self.graph_constraint)
        out: dict[str, Any] = {"protocol": self.protocol, "ks": list(self.ks)}
        out.update(blocks[CONSTRAINTS[main]])  # the plain keys: the configured candidate list
        strict = state.hits[:, 0, main, 0]  # [P, K]
        order = sorted(range(len(state.predicates)), key=lambda i: state.predicates[i])
        per_predicate: dict[str, dict[str, Any]] = {}
        for i in order:
            n = int(state.gt[i, 0])
            entry: dict[str, Any] = {"gt": n}
            for j, k in enumerate(self.ks):
                entry[f"hits@{k}"] = int(strict[i, j])
                entry[f"R@{k}"] = 100.0 * int(strict[i, j]) / n if n else None
            per_predicate[state.predicates[i]] = entry
        c = state.counters
        videos = c["videos"]
        # a count is only meaningful where every video had a vocabulary to check against
        known = {k: bool(videos) and c[f"{k[:-1]}_vocab_known"] == videos for k in ("objects", "predicates")}
        distinct = {k: sum(e.startswith(f"{k[:-1]}:") for e in state.unmapped_labels) for k in known}
        out.update(
            {
                "per_predicate": per_predicate,
                "num_videos": videos,
                "num_gt_relations": total,
                "num_missing_predictions": c["missing_predictions"],
                "missing_predictions": state.missing,
                "unmapped_labels": {
                    # objects / predicates: predicted objects and relations; distinct_*: distinct labels
                    **{k: c[f"unmapped_{k}"] if known[k] else None for k in known},
                    **{f"distinct_{k}": distinct[k] if known[k] else None for k in known},
                    "objects_checked": c["checked_objects"],
                    "predicates_checked": c["checked_predicates"],
                    "examples": state.unmapped_labels[:_MAX_EXAMPLES],
                },
                "zero_shot": {"subset": self.zero_shot.describe(), "num_gt_relations": int(state.gt[:, 1].sum())}
                if self.zero_shot is not None
                else None,
                **blocks,
                "settings": {
                    "graph_constraint": self.graph_constraint,
                    "iou_threshold": self.iou_threshold,
                    "viou_threshold": self.viou_threshold,
                    "tiou_threshold": self.tiou_threshold,
                    "weak_viou_threshold": self.weak_viou_threshold,
                    "label_map": bool(self.label_map.objects or self.label_map.predicates),
                },
            }
        )
        warning = unmapped_warning(objects=c["unmapped_objects"], predicates=c["unmapped_predicates"],
                                   labels=state.unmapped_labels, label_map_given=self.label_map_given)
        if warning:
            log.warning("%s", warning)
        return out


def evaluate(
    preds: Iterable[SceneGraph4D],
    gts: Iterable[SceneGraph4D] | Mapping[str, SceneGraph4D],
    *,
    protocol: str = "pvsg",
    ks: Sequence[int] = (20, 50, 100),
    also: Sequence[Any] = (),
    **options: Any,
) -> dict[str, Any]:
    """Score predictions against ground truth in one call (see :class:`SceneGraphRecall` for ``options``,
    e.g. ``zero_shot=ZeroShot(novel_categories={"dog"})`` for ``zR@K`` on relations involving a dog).

    Predictions are streamed; a prediction for a video not in the ground truth, or
    two predictions for one video, raise :class:`DataError`. GT videos without a
    prediction count as all misses and are listed in ``missing_predictions``.
    ``also``: other metrics with ``update(pred | None, gt)`` (e.g.
    :class:`~psg4d.eval.segmentation.SegmentationQuality`) fed in the same pass, after these checks.
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
        for m in also:
            m.update(p, truth[vid])
    for vid, g in truth.items():
        if vid not in seen:
            metric.update(None, g)
            for m in also:
                m.update(None, g)
    if metric.missing_predictions:
        log.warning("%d ground-truth videos have no prediction (scored as misses)", len(metric.missing_predictions))
    return metric.compute()
