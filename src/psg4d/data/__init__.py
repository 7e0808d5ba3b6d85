"""Data: the canonical schema, readers for public formats, and the synthetic 4D world."""

from psg4d.data.schema import MaskTube, ObjectTrack, Relation, Sample, SceneGraph4D, Video4D

__all__ = ["MaskTube", "ObjectTrack", "Relation", "Sample", "SceneGraph4D", "Video4D"]
