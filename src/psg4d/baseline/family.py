"""The pipeline baseline as a model family of :mod:`psg4d.families`: train from a ``kind:
pipeline`` experiment YAML, and load a checkpoint's predictor for any command."""

from __future__ import annotations

import logging
from pathlib import Path

from psg4d.baseline.config import load_pipeline_config
from psg4d.baseline.predict import PipelinePredictor
from psg4d.errors import ConfigError
from psg4d.families import PredictOptions, StageLine, TrainReport, TrainRequest

log = logging.getLogger(__name__)


def train(request: TrainRequest) -> TrainReport:
    """The pipeline's segment, track and relation stages (:func:`psg4d.baseline.pipeline.train_pipeline`)."""
    from psg4d.baseline.pipeline import train_pipeline

    cfg = load_pipeline_config(request.config, request.overrides)
    result = train_pipeline(cfg, out_dir=request.out, resume=request.resume, only_stage=request.stage)
    lines = [StageLine(name=st.name, skipped=st.skipped, wall_s=st.wall_s, final_loss=st.final_loss,
                       work=f"{st.steps} {'videos' if st.name == 'track' else 'steps'}") for st in result.stages]
    return TrainReport(stages=lines, final_dir=result.final_dir)


def load_predictor(ckpt: Path, options: PredictOptions) -> PipelinePredictor:
    """The checkpoint's segmenter, tracker and relation model, keeping at most
    ``options.max_candidates`` relations. The options that choose how an LLM reads the video are
    refused; ``max_new_tokens`` bounds text the pipeline never writes, so it holds trivially."""
    from psg4d.utils.threads import AdaptiveThreads

    if options.mode != "auto" or options.vocabulary is not None or options.namer is not None:
        raise ConfigError(f"{ckpt}: a pipeline-baseline checkpoint predicts one way; --mode, --vocab and --namer "
                          "are the 4D-LLM's")
    # the pipeline reads its threads once, not before every video as the 4D-LLM's predictor does
    AdaptiveThreads(options.threads)()
    predictor = PipelinePredictor.from_pretrained(ckpt)
    predictor.config.relation.top_k = min(predictor.config.relation.top_k, options.max_candidates)
    if options.depth_given is False and predictor.config.segmenter.use_depth:
        log.warning("no depth given: the pipeline's depth branch reads every pixel as unknown depth"
                    " (meta depth_source 'none')")
    return predictor
