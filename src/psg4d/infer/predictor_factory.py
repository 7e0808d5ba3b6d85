"""Choosing and running a predictor: ``direct`` (:mod:`psg4d.infer.predictor`) or ``chain``
(:mod:`psg4d.infer.chain`), the vocabulary file of ``--vocab``, the 4D-LLM's loader for the model
registry (:func:`load_predictor`, :mod:`psg4d.families`), and a whole split at a time with a
checkpoint of any family (:func:`predict_split`)."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Iterator

from psg4d.data.schema import SceneGraph4D
from psg4d.errors import DataError
from psg4d.families import PredictOptions, family_of_checkpoint
from psg4d.infer.chain import ChainPredictor
from psg4d.infer.predictor import Predictor, PredictorConfig
from psg4d.infer.ranking import load_mode
from psg4d.model.psg4d_llm import PSG4DModel

log = logging.getLogger(__name__)

# `--mode auto` for a checkpoint trained on both texts with no mode chosen on validation: the direct
# text, the one every such checkpoint is trained on (no score chose it).
UNCHOSEN_AUTO_MODE = "direct"


def resolve_mode(mode: str, model_config, checkpoint_dir: str | Path | None = None) -> str:
    """``auto`` -> for a model trained on chained text, the mode chosen on validation for its
    checkpoint (``ranking.json``, ``psg4d tune-ranking``), else :data:`UNCHOSEN_AUTO_MODE` (with a
    warning); a model never trained on chained text predicts ``direct``."""
    if mode != "auto":
        return mode
    if model_config.chain_prob <= 0:
        return "direct"
    chosen = load_mode(checkpoint_dir)
    if chosen is None:
        log.warning("--mode auto: no mode was chosen on validation for this checkpoint (psg4d tune-ranking "
                    "chooses one); predicting %s", UNCHOSEN_AUTO_MODE)
        return UNCHOSEN_AUTO_MODE
    return chosen[0]


def load_vocabulary(path: Path) -> list[str]:
    """Class names from a text file (one per line, ``#`` comments) or a dataset folder (its object
    vocabulary); one clear error naming the file otherwise."""
    if path.is_dir():
        from psg4d.data.readers import open_dataset

        names = list(open_dataset(path).object_vocab)
    elif path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise DataError(path, f"not UTF-8 text (byte {e.start})") from None
        names = [ln.split("#")[0].strip() for ln in text.splitlines()]
    else:
        raise DataError(path, "vocabulary file or dataset folder not found")
    names = list(dict.fromkeys(n for n in names if n))
    if not names:
        raise DataError(path, "holds no class names")
    return names


def build_predictor(model: PSG4DModel, config: PredictorConfig | None = None) -> Predictor | ChainPredictor:
    """The predictor ``config.mode`` names (``direct``: :class:`Predictor`; ``chain``: :class:`ChainPredictor`)."""
    config = config or PredictorConfig()
    config = replace(config, mode=resolve_mode(config.mode, model.config, model.checkpoint_dir))
    if config.mode == "direct" and (config.vocabulary is not None or config.namer is not None):
        log.warning("--vocab and --namer name objects in chain mode; predicting direct, they are not used")
    return ChainPredictor(model=model, config=config) if config.mode == "chain" else Predictor(model=model,
                                                                                              config=config)


def load_predictor(ckpt: Path, options: PredictOptions) -> Predictor | ChainPredictor:
    """The 4D-LLM's predictor of checkpoint ``ckpt`` (its mode resolved, :func:`resolve_mode`), saying
    what a video without depth will mean for this model when ``options.depth_given`` is False."""
    model = PSG4DModel.from_pretrained(ckpt)
    predictor = build_predictor(model, PredictorConfig(
        max_new_tokens=options.max_new_tokens, max_candidates=options.max_candidates, threads=options.threads,
        mode=options.mode, vocabulary=options.vocabulary, namer=options.namer))
    log.info("prediction mode: %s", predictor.config.mode)
    if options.depth_given is False and model.estimators is not None:
        log.info("no depth given: depth features are estimated from RGB by the checkpoint's depth estimator (F_de)")
    elif options.depth_given is False:
        log.warning(
            "no depth given: RGB-only mode. The encoder's aggregator uses the RGB branch alone; depth is not"
            " estimated (this checkpoint has no 2D-to-4D transfer estimators: train the transfer stages for them)."
        )
    return predictor


def predict_split(
    ckpt_dir: str | Path, data_path: str | Path, split: str, *, limit: int | None = None,
    options: PredictOptions | None = None, progress: bool = False,
) -> Iterator[SceneGraph4D]:
    """Predict every video of ``split`` of the dataset at ``data_path`` (lazily, one at a time;
    ``progress``: a tqdm bar) with a checkpoint of any model family (:mod:`psg4d.families`)."""
    from tqdm import tqdm

    from psg4d.data.readers import open_dataset

    predictor = family_of_checkpoint(ckpt_dir).load_predictor(ckpt_dir, options)
    reader = open_dataset(data_path)
    ids = reader.video_ids(split)
    for vid in tqdm(ids if limit is None else ids[:limit], desc="predict", unit="video", disable=not progress):
        yield predictor.predict(reader.read_video(vid))
