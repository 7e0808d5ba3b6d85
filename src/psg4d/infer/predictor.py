"""From a video to a ranked 4D scene graph with a trained :class:`PSG4DModel`.

:meth:`Predictor.predict` makes one call into the model and one ranking:

1. :meth:`SceneReader.read <psg4d.model.reading.SceneReader.read>` reads the video: the greedy
   text, the objects with their mask tubes, and every candidate relation with its text score
   (the steps are in :mod:`psg4d.model.reading`).
2. :meth:`Predictor.rank` adds the tubes' evidence to each candidate's text score (their
   predicted quality and how long both are present) with the weights chosen on a validation
   split (:mod:`psg4d.infer.ranking`, ``ranking.json`` beside the checkpoint), sorts, cuts at
   ``max_candidates`` and writes the :class:`SceneGraph4D` on the video's own timeline (a video
   frame shows its nearest model frame's mask; a model-frame span covers the video frames whose
   nearest model frame lies in it).

:meth:`Predictor.score_candidates` stops before the ranking and :meth:`Predictor.rank` finishes
it, so weights can be tried on one set of candidates (``psg4d tune-ranking``).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from psg4d.data.schema import MaskTube, ObjectTrack, Relation, SceneGraph4D, Video4D, merge_spans
from psg4d.errors import ConfigError
from psg4d.infer.ranking import RankingWeights, load_ranking
from psg4d.model.generation import Generation, SceneGraphGenerator
from psg4d.model.psg4d_llm import PSG4DModel
from psg4d.model.reading import Candidate, ReadSettings, SceneReader, Tube
from psg4d.utils.threads import AdaptiveThreads

log = logging.getLogger(__name__)


PREDICT_MODES = ("direct", "chain")


@dataclass
class PredictorConfig:
    mask_threshold: float = 0.0  # on mask logits
    merge_viou: float = 0.5
    max_new_tokens: int | None = None  # None: the model config's
    max_candidates: int = 300
    max_new_pairs: int = 80
    score_batch_size: int = 32
    # Objects the tagging head found (model.tag_words) but the generation never mentioned get a
    # tube from a teacher-forced "<tag> [Obj]" after the generated text, and join the pairings.
    tag_objects: bool = True
    # Score candidates against the shared context's KV cache (False: recompute the context for
    # every candidate; same results, the reference the cached path is tested against).
    cached_scoring: bool = True
    # torch intra-op threads: None adapts before every video to the CPUs other processes leave
    # free (psg4d.utils.threads.AdaptiveThreads); a number fixes it.
    threads: int | None = None
    # "direct": one scene-graph text (this module); "chain": the four chained steps
    # (psg4d.infer.chain; the model must have been trained with model.chain_prob > 0); "auto": the
    # one chosen on validation for the checkpoint (psg4d.infer.predictor_factory.resolve_mode).
    mode: str = "direct"
    # Chain mode: the class names an object of a kind training never named may get (scored by the
    # LLM's language knowledge); None: it names such an object in free text.
    vocabulary: list[str] | None = None
    # Chain mode: each turn decoded under its grammar (psg4d.model.chain_grammar), so every turn
    # ends and reads back whole; False: free greedy decoding up to the token limit (the old way).
    constrained: bool = True
    chain_max_objects: int = 16  # objects the describe turn may list
    # Chain mode: the pretrained language model that names an object of a kind training never named
    # (psg4d.model.llm: "smollm2-135m", "gemma3-270m" or a local HF folder); None: the 4D-LLM's own
    # LLM with its adapters off (a tiny LLM trained from scratch has no language knowledge to name with).
    namer: str | None = None
    # Chain mode, with an attribute head: an object whose appearance it reads as no training
    # category's is an unknown object, named by language from that reading; False: the reading is
    # recorded (attributes["read_description"]) but the name follows the written description.
    unknown_objects: bool = True
    # Chain mode, with an attribute head: how much better (mean log-probability per cell) the
    # frames' reading must explain a tube than any training category's description before the
    # object is unknown (psg4d.model.attributes.read_attributes). None: the margin psg4d tune-ranking
    # chose on validation for the checkpoint (ranking.json), else 0 (any reading no category has).
    unknown_margin: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in (*PREDICT_MODES, "auto"):
            raise ConfigError(f"predict mode must be one of {', '.join(PREDICT_MODES)} or auto, got {self.mode!r}")
        if self.chain_max_objects < 1:
            raise ConfigError(f"chain_max_objects must be >= 1, got {self.chain_max_objects}")
        if self.unknown_margin is not None and not self.unknown_margin >= 0:
            raise ConfigError(f"unknown_margin must be >= 0, got {self.unknown_margin}")


@dataclass
class ScoredCandidates:
    """One video's prediction before the ranking: its objects, every candidate relation with its
    text score, and what the scene graph records (no tensors: many can be held at once)."""

    video_id: str
    num_frames: int
    size: tuple[int, int]
    objects: list[tuple[str, Tube]]
    candidates: list[Candidate]
    owner: np.ndarray  # [T_video] model frame of each video frame
    meta: dict
    extra: dict = field(default_factory=dict)  # what a predictor's own rank() needs besides (the chain's naming)


class Predictor:
    """Wraps a trained :class:`PSG4DModel`; see the module docstring."""

    def __init__(self, *, model: PSG4DModel, config: PredictorConfig | None = None,
                 ranking: RankingWeights | None = None):
        """``ranking``: the ranking weights (default: the checkpoint's ``ranking.json``, else text only)."""
        self.model = model.eval()
        self.config = config or PredictorConfig()
        cfg = self.config
        self.generator = SceneGraphGenerator(model, cached=cfg.cached_scoring)
        self.reader = SceneReader(self.generator, ReadSettings(
            max_new_tokens=cfg.max_new_tokens, mask_threshold=cfg.mask_threshold, merge_viou=cfg.merge_viou,
            tag_objects=cfg.tag_objects, max_new_pairs=cfg.max_new_pairs, score_batch_size=cfg.score_batch_size))
        self.threads = AdaptiveThreads(cfg.threads)
        self.ranking = ranking if ranking is not None else load_ranking(model.checkpoint_dir)

    # what every family's predictor offers the commands (psg4d.families.VideoPredictor)
    @property
    def max_frames(self) -> int:
        return self.model.config.max_frames

    @property
    def image_size(self) -> int:
        return self.model.config.image_size

    @property
    def max_candidates(self) -> int:
        return self.config.max_candidates

    def predict(self, video: Video4D, *, mask_size: tuple[int, int] | None = None) -> SceneGraph4D:
        """The ranked scene graph of ``video``. ``mask_size`` (H, W): the size of the masks written
        (default: the video's); a video read downscaled still gets masks at its source resolution."""
        return self.rank(self.score_candidates(video, mask_size=mask_size))

    def score_candidates(self, video: Video4D, *, mask_size: tuple[int, int] | None = None) -> ScoredCandidates:
        """Everything but the ranking: the model's reading of ``video`` (:mod:`psg4d.model.reading`)."""
        size = mask_size or (video.height, video.width)
        self.threads()
        read = self.reader.read(video, size=size)
        return ScoredCandidates(video_id=video.video_id, num_frames=video.num_frames, size=size, objects=read.objects,
                                candidates=read.candidates, owner=read.owner,
                                meta=graph_meta(read.generation, read.dropped))

    def ranked(self, objects: list[tuple[str, Tube]], candidates: Sequence[Candidate],
               weights: RankingWeights | None = None) -> list[Candidate]:
        """``candidates`` with their ranking score (``final``), best first, at most ``max_candidates``."""
        w = weights or self.ranking
        presence = [tube.present() for _, tube in objects]
        for c in candidates:
            c.final = w.score(c.score, objects[c.subject][1].score, objects[c.object][1].score,
                              presence[c.subject] & presence[c.object])
        return sorted(candidates, key=lambda c: -c.final)[: self.config.max_candidates]

    def rank(self, scored: ScoredCandidates, weights: RankingWeights | None = None) -> SceneGraph4D:
        """The scene graph of ``scored`` with its candidates ranked by ``weights`` (default: the
        predictor's); ``meta["ranking"]`` records them."""
        w = weights or self.ranking
        ranked = self.ranked(scored.objects, scored.candidates, w)
        return scene_graph(self.model.config, scored.video_id, scored.num_frames, scored.size,
                           dict(scored.meta, ranking=asdict(w)), scored.objects, ranked, scored.owner)


def graph_meta(gen: Generation, dropped: int) -> dict:
    """What a predicted scene graph records of the generation it came from."""
    return {"generated_text": gen.text, "dropped_triplets": dropped, "num_generated_tokens": len(gen.token_ids),
            "depth_source": gen.context.depth_source,
            **({"tags": list(gen.context.tags)} if gen.context.tags is not None else {})}


def scene_graph(model_config, video_id: str, num_frames: int, size: tuple[int, int], meta: dict,
                objects: list[tuple[str, Tube]], ranked: Sequence[Candidate], owner: np.ndarray) -> SceneGraph4D:
    """The scene graph of ranked candidates (their ``final`` scores) on the video's timeline:
    ``owner [T_video]`` is the model frame each video frame shows."""
    # a video frame shows its model frame's mask: the RLE dicts are shared, not copied
    tracks = [
        ObjectTrack(object_id=i, category=cat, score=tube.score,
                    tube=MaskTube(height=size[0], width=size[1], rles=[tube.rles[m] for m in owner]))
        for i, (cat, tube) in enumerate(objects)
    ]
    relations = []
    for c in ranked:
        spans = []
        for a, b in c.spans:
            covered = np.nonzero((owner >= a) & (owner <= b))[0]
            if covered.size:
                spans.append((int(covered[0]), int(covered[-1])))
        if spans:
            relations.append(Relation(c.subject, c.object, c.predicate, merge_spans(spans), score=c.final))
    return SceneGraph4D(
        video_id=video_id,
        num_frames=num_frames,
        height=size[0],
        width=size[1],
        objects=tracks,
        relations=relations,
        object_vocab=list(model_config.object_vocab) or None,
        predicate_vocab=list(model_config.predicate_vocab) or None,
        meta=meta,
    )
