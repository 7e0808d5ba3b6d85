"""The PSG4DFormer pipeline baseline: per-frame RGB-D panoptic segmentation -> tracking -> a
relation model over tubes, trained and scored on the same data and evaluator as the 4D-LLM.

Modules, in the order the pipeline runs:

* :mod:`.config` — typed configs (``PipelineConfig`` and one per stage).
* :mod:`.types` — the contracts between stages (``FrameDetections``, ``TrackedTubes``).
* :mod:`.segmenter` — Mask2Former-style query segmenter on RGB and depth backbones fused by gates.
* :mod:`.matching` / :mod:`.seg_loss` — Hungarian matching of queries to gold segments; the losses.
* :mod:`.tracker` — per-frame segments linked into tubes (Hungarian on mask IoU and embeddings).
* :mod:`.relation` / :mod:`.targets` — the relation model over tubes; its targets from gold graphs.
* :mod:`.pipeline` — training stages with on-disk caches; :mod:`.predict` — video -> ``SceneGraph4D``.

Depends on :mod:`psg4d.data` and :mod:`psg4d.utils` only.
"""
