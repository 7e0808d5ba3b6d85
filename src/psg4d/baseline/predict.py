"""The pipeline at inference: video -> per-frame segments -> tubes -> ranked relations -> ``SceneGraph4D``."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from psg4d.baseline.checkpoint import load_modules, read_config
from psg4d.baseline.config import PipelineConfig
from psg4d.baseline.relation import RelationModel
from psg4d.baseline.segmenter import QuerySegmenter
from psg4d.baseline.tracker import Tracker
from psg4d.baseline.types import FrameDetections, TrackedTubes
from psg4d.config import from_dict
from psg4d.data.schema import MaskTube, ObjectTrack, Relation, SceneGraph4D, Video4D
from psg4d.errors import CheckpointError
from psg4d.families import PIPELINE_KIND, family_of_checkpoint, strip_header

log = logging.getLogger(__name__)



def pipeline_config_from(path: str | Path) -> PipelineConfig:
    """The config of the pipeline checkpoint ``path`` (its header checked by the registry)."""
    if family_of_checkpoint(path).kind != PIPELINE_KIND:
        raise CheckpointError(f"{path}: not a pipeline checkpoint (config kind {read_config(path).get('kind')!r})")
    return from_dict(PipelineConfig, strip_header(read_config(path)), where="", source=Path(path) / "config.json")


class PipelinePredictor:
    """Segmenter + tracker + relation model. ``relation`` may be ``None`` (the track stage, before
    the relation model exists: :meth:`tubes` only)."""

    def __init__(self, *, config: PipelineConfig, segmenter: QuerySegmenter, tracker: Tracker,
                 relation: RelationModel | None, chunk: int = 16):
        self.config = config
        self.segmenter = segmenter.eval()
        self.tracker = tracker
        self.relation = relation.eval() if relation is not None else None
        self.chunk = chunk

    # what every family's predictor offers the commands (psg4d.families.VideoPredictor). One pass
    # holds every frame's segments and tubes at the segmenter's size, so a longer video streams in
    # windows as the 4D-LLM's does (psg4d.infer.streaming: memory bounded by one window); a pass
    # is as long as the relation model's learned timeline, so within it nothing is subsampled.
    @property
    def max_frames(self) -> int:
        return self.config.relation.max_frames

    @property
    def image_size(self) -> int:
        return self.config.segmenter.image_size

    @property
    def max_candidates(self) -> int:
        return self.config.relation.top_k

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "PipelinePredictor":
        cfg = pipeline_config_from(path)
        seg, rel = QuerySegmenter(config=cfg.segmenter), RelationModel(config=cfg.relation)
        load_modules(path, {"segmenter": seg, "relation": rel})
        return cls(config=cfg, segmenter=seg, tracker=Tracker(config=cfg.tracker), relation=rel)

    @torch.no_grad()
    def tubes(self, video: Video4D) -> TrackedTubes:
        """The video's tubes at the segmenter's ``image_size`` (what the track stage caches): per-frame
        segments, ``chunk`` frames a pass, linked by the tracker (with the same resized depth for the
        tubes' geometry, when the segmenter uses depth)."""
        use_depth = self.config.segmenter.use_depth
        dets: list[FrameDetections] = []
        depths: list[torch.Tensor] = []
        for start in range(0, video.num_frames, self.chunk):
            frames = list(range(start, min(start + self.chunk, video.num_frames)))
            rgb, depth = self.segmenter.preprocess(video, frames)  # [t, 3, S, S], [t, 1, S, S] | None
            depth = depth if use_depth else None
            dets += self.segmenter.detect(self.segmenter(rgb, depth))
            if depth is not None:
                depths.append(depth[:, 0].cpu())
        return self.tracker.track(dets, torch.cat(depths).numpy() if depths else None)

    @torch.no_grad()
    def predict(self, video: Video4D, *, mask_size: tuple[int, int] | None = None) -> SceneGraph4D:
        """The video's scene graph: ranked relations, every tube at ``mask_size`` (default: the
        video's frame size)."""
        if self.relation is None:
            raise CheckpointError("this pipeline has no relation model yet (train its relation stage)")
        tubes = self.tubes(video)
        triplets = self._relations(tubes) if len(tubes) else []
        names = self.config.segmenter.class_names
        stuff = set(self.config.segmenter.stuff_names)
        height, width = mask_size or (video.height, video.width)
        objects = []
        for i in range(len(tubes)):
            cat = names[int(tubes.labels[i])]
            frame_cats = [names[int(c)] if c >= 0 else None for c in tubes.frame_labels[i]]
            objects.append(ObjectTrack(object_id=i + 1, category=cat, is_thing=cat not in stuff,
                                       tube=_tube_at(tubes.masks[i], tubes.valid[i], height, width),
                                       frame_categories=frame_cats, score=round(float(tubes.scores[i]), 4)))
        relations = [Relation(s + 1, o + 1, pred, [(int(a), int(b)) for a, b in spans], score=float(score))
                     for s, o, pred, score, spans in triplets]
        return SceneGraph4D(video_id=video.video_id, num_frames=video.num_frames, height=height,
                            width=width, objects=objects, relations=relations,
                            predicate_vocab=list(self.config.relation.predicate_names),
                            meta={"model": "pipeline", "tubes": len(tubes),
                                  "use_depth": self.config.segmenter.use_depth,
                                  "use_temporal": self.config.relation.use_temporal,
                                  # the depth branch reads the sensor's depth only when both exist; without
                                  # depth it reads zeros ("unknown"), which is no depth, not an estimate
                                  "depth_source": "sensor" if self.config.segmenter.use_depth
                                  and video.depth is not None else "none"})


    def _relations(self, tubes: TrackedTubes) -> list:
        """The relation model's triplets; a video longer than its learned temporal positions is
        read at ``max_frames`` evenly spaced frames, and each span mapped back to the video's frames."""
        limit = self.config.relation.max_frames
        if tubes.num_frames <= limit:
            return self.relation.predict(tubes)
        keep = np.unique(np.linspace(0, tubes.num_frames - 1, limit).round().astype(int))  # [T']
        sub = TrackedTubes(masks=tubes.masks[:, keep], valid=tubes.valid[:, keep], feats=tubes.feats[:, keep],
                           geometry=tubes.geometry[:, keep], class_probs=tubes.class_probs, labels=tubes.labels,
                           frame_labels=tubes.frame_labels[:, keep], scores=tubes.scores)
        out = []
        for s, o, pred, score, spans in self.relation.predict(sub):
            # a span between two kept frames holds until just before the next kept frame after it
            full = [(int(keep[a]), int(keep[b + 1] - 1) if b + 1 < len(keep) else tubes.num_frames - 1)
                    for a, b in spans]
            out.append((s, o, pred, score, full))
        return out


# frames resized at a time: a tube at a large source size is never dense in memory as a whole
RESIZE_CHUNK = 32


def _tube_at(masks: np.ndarray, valid: np.ndarray, height: int, width: int) -> MaskTube:
    """One tube ``[T, S, S]`` bool (``valid [T]``: the frames it is present in) at ``height x width``,
    ``RESIZE_CHUNK`` frames at a time (bilinear on the binary mask, then 0.5: smoother outlines than
    nearest when a real video is larger than the segmenter's input)."""
    rles: list[dict | None] = []
    for a in range(0, masks.shape[0], RESIZE_CHUNK):
        chunk = masks[a : a + RESIZE_CHUNK]  # [t, S, S]
        if chunk.shape[-2:] != (height, width):
            x = torch.from_numpy(chunk[:, None].astype(np.float32))
            chunk = (F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)[:, 0] > 0.5).numpy()
        rles += MaskTube.from_dense(chunk, present=valid[a : a + RESIZE_CHUNK]).rles
    return MaskTube(height=height, width=width, rles=rles)
