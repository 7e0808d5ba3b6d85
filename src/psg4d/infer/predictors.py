"""Choosing and running a predictor: ``direct`` (:mod:`psg4d.infer.predictor`) or ``chain``
(:mod:`psg4d.infer.chain`), the vocabulary file of ``--vocab``, and a whole split at a time."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Iterator

from psg4d.data.schema import SceneGraph4D
from psg4d.errors import DataError
from psg4d.infer.chain import ChainPredictor
from psg4d.infer.predictor import Predictor, PredictorConfig
from psg4d.model.psg4d_llm import PSG4DModel

# The mode `--mode auto` picks for a checkpoint trained on both texts: the one that scored better in
# `psg4d experiment chain` (BENCHMARKS.md). A checkpoint never trained on chained text is direct.
AUTO_MODE = "direct"


def resolve_mode(mode: str, model_config) -> str:
    """``auto`` -> :data:`AUTO_MODE` for a model trained on chained text, else ``direct``."""
    if mode != "auto":
        return mode
    return AUTO_MODE if model_config.chain_prob > 0 else "direct"


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
    config = replace(config, mode=resolve_mode(config.mode, model.config))
    return ChainPredictor(model=model, config=config) if config.mode == "chain" else Predictor(model=model,
                                                                                              config=config)


def predict_split(
    ckpt_dir: str | Path, data_path: str | Path, split: str, *, limit: int | None = None,
    config: PredictorConfig | None = None, progress: bool = False,
) -> Iterator[SceneGraph4D]:
    """Predict every video of ``split`` of the dataset at ``data_path`` (lazily, one at a time;
    ``progress``: a tqdm bar) with a 4D-LLM or a pipeline-baseline checkpoint."""
    from tqdm import tqdm

    from psg4d.data.readers import open_dataset

    from psg4d.baseline.predict import PipelinePredictor, is_pipeline_checkpoint

    if is_pipeline_checkpoint(ckpt_dir):  # the pipeline baseline: one way to predict, no modes
        predictor = PipelinePredictor.from_pretrained(ckpt_dir)
    else:
        predictor = build_predictor(PSG4DModel.from_pretrained(ckpt_dir), config)
    reader = open_dataset(data_path)
    ids = reader.video_ids(split)
    for vid in tqdm(ids if limit is None else ids[:limit], desc="predict", unit="video", disable=not progress):
        yield predictor.predict(reader.read_video(vid))
