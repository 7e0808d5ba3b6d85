"""The canonical 4D scene-graph schema that every reader, model, metric and viewer speaks.

* :class:`Video4D` — RGB frames ``[T, H, W, 3]`` uint8, optional metric depth
  ``[T, H, W]`` float32, optional intrinsics.
* :class:`MaskTube` — one binary mask per frame, stored as COCO RLE
  (pycocotools); a frame where the object is absent is ``None``.
* :class:`ObjectTrack` — an object id, an (open-vocabulary) category, thing/stuff
  and its mask tube.
* :class:`Relation` — ``<subject, predicate, object>`` with a list of inclusive
  ``[start, end]`` frame spans and, for predictions, a score.
* :class:`SceneGraph4D` — one video's objects and relations (ground truth or a
  ranked prediction), with the vocabularies used.
* :class:`Sample` — a video with its scene graph, as readers yield them.

JSON (de)serialisation round-trips exactly. :meth:`SceneGraph4D.validate` names
the file and field of any inconsistency.

Collections of scene graphs (a split's ground truth, a model's predictions) are
stored as JSON Lines, one scene graph per line, so that they can be streamed a
video at a time (:func:`save_scene_graphs`, :func:`iter_scene_graphs`).

This module is the one import for all of it. The parts live by job in
:mod:`psg4d.data.video4d` (the video), :mod:`psg4d.data.scene_graph` (the
scene-graph types, spans and their JSON form), :mod:`psg4d.data.scene_graph_files`
(JSON Lines collections) and :mod:`psg4d.data.masks` (the RLE helpers); every
public name is re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass

# the RLE helpers are re-exported: viewers, inference and user code import them from the schema
from psg4d.data.masks import (
    coco_rle, rle_area, rle_areas, rle_decode, rle_encode, rle_encode_batch, rle_problem,
)
from psg4d.data.scene_graph import (
    SCHEMA_VERSION, MaskTube, ObjectTrack, Relation, SceneGraph4D, Span, merge_spans, spans_from_mask,
)
from psg4d.data.scene_graph_files import iter_scene_graphs, load_scene_graphs, save_scene_graphs
from psg4d.data.video4d import Video4D

__all__ = [
    "SCHEMA_VERSION", "MaskTube", "ObjectTrack", "Relation", "Sample", "SceneGraph4D", "Span", "Video4D",
    "coco_rle", "iter_scene_graphs", "load_scene_graphs", "merge_spans", "rle_area", "rle_areas", "rle_decode",
    "rle_encode", "rle_encode_batch", "rle_problem", "save_scene_graphs", "spans_from_mask",
]  # fmt: skip


@dataclass
class Sample:
    """A video with its (ground-truth) scene graph, as readers yield them.

    ``lifted``: a 2D scene-graph image to be lifted to a pseudo-4D clip (the 2D-to-4D transfer's
    training data); its first frame is the image and its relations hold over the whole clip.
    """

    video: Video4D
    graph: SceneGraph4D
    lifted: bool = False
