"""Trivial reference baselines, so that learned models are measured against a floor.

:class:`FrequencyBaseline` predicts, for every video, the training split's most
frequent ``(subject category, predicate, object category)`` triplets, ranked by
their frequency, each with **whole-frame** mask tubes and a whole-video span.
It knows nothing about the video: any score it gets comes from label priors
(and, under the lenient ``pvsg`` protocol, from objects that happen to cover
most of the frame, such as the floor).
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable

import numpy as np

from psg4d.data.schema import MaskTube, ObjectTrack, Relation, SceneGraph4D


class FrequencyBaseline:
    """Most-frequent-triplet predictor with whole-frame tubes."""

    def __init__(self, *, top_k: int = 100):
        self.top_k = top_k
        self.triplets: list[tuple[tuple[str, str, str], int]] = []

    def fit(self, graphs: Iterable[SceneGraph4D]) -> "FrequencyBaseline":
        counts: Counter[tuple[str, str, str]] = Counter()
        for g in graphs:
            cats = {o.object_id: o.category for o in g.objects}
            for r in g.relations:
                counts[(cats[r.subject_id], r.predicate, cats[r.object_id])] += 1
        # ties broken alphabetically so the ranking is deterministic
        self.triplets = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: self.top_k]
        return self

    def predict(self, *, video_id: str, num_frames: int, height: int, width: int) -> SceneGraph4D:
        full = MaskTube.from_dense(np.ones((num_frames, height, width), dtype=bool))
        objects: dict[str, ObjectTrack] = {}

        def obj(cat: str) -> int:
            if cat not in objects:
                objects[cat] = ObjectTrack(object_id=len(objects), category=cat, tube=full)
            return objects[cat].object_id

        total = sum(c for _, c in self.triplets) or 1
        relations = [
            Relation(obj(s), obj(o), p, [(0, num_frames - 1)], score=c / total) for (s, p, o), c in self.triplets
        ]
        return SceneGraph4D(
            video_id=video_id,
            num_frames=num_frames,
            height=height,
            width=width,
            objects=list(objects.values()),
            relations=relations,
            meta={"model": "frequency_baseline"},
        )

    def predict_like(self, gt: SceneGraph4D) -> SceneGraph4D:
        """Prediction for the video that ``gt`` annotates (uses only its id and size)."""
        return self.predict(video_id=gt.video_id, num_frames=gt.num_frames, height=gt.height, width=gt.width)
