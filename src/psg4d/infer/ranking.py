"""How a prediction's candidate relations are ranked: the LLM's text with the tubes' evidence.

The text probability alone ranks a relation between two objects whose tubes the decoder itself
distrusts, or which never appear together, as high as any other. Each candidate's score is::

    log p(text) + quality * (log q_subject + log q_object) + presence * log c

``q``: a tube's mean predicted IoU (the mask decoder's own estimate of its quality; with SAM2,
gated by its object-presence head), ``c``: the share of model frames where both tubes are
present; both clamped to at least ``FLOOR``. With both weights 0 the ranking is the text alone.

The weights are chosen on a validation split (``psg4d tune-ranking``, :mod:`psg4d.tune_ranking`)
and written to ``ranking.json`` in the checkpoint folder, where every predictor of that checkpoint
reads them (:func:`load_ranking`); each prediction's ``meta["ranking"]`` says which weights ranked
it and where they came from. For a checkpoint trained on both the direct and the chained text, the
same file records which of the two ``--mode auto`` predicts with, also chosen on validation
(:func:`load_mode`), the chained predictor's own weights (``chain_ranking``), and with an attribute
head the chain's unknown-object margin (:func:`load_unknown_margin`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from psg4d.errors import DataError

RANKING_FILE = "ranking.json"
FLOOR = 1e-3
TEXT_ONLY = "none: no ranking.json beside the model's checkpoint, the text probability alone"


@dataclass(frozen=True, kw_only=True)
class RankingWeights:
    quality: float = 0.0
    presence: float = 0.0
    # where the weights came from (a validation result, or why there is none)
    chosen_on: str = TEXT_ONLY

    def score(self, text: float, q_subject: float, q_object: float, both_present: np.ndarray) -> float:
        """The ranking score of one candidate (module docstring); ``both_present [T_m]`` bool."""
        s = text
        if self.quality:
            s += self.quality * (math.log(max(q_subject, FLOOR)) + math.log(max(q_object, FLOOR)))
        if self.presence:
            share = float(np.mean(both_present)) if len(both_present) else 0.0
            s += self.presence * math.log(max(share, FLOOR))
        return s


def load_ranking(ckpt_dir: str | Path | None, mode: str = "direct") -> RankingWeights:
    """The weights in ``ckpt_dir/ranking.json``; text only where there is none (or no folder: a
    model never saved predicts as its checkpoint would before tuning). ``mode="chain"``: the
    chained predictor's own weights (the file's ``chain_ranking`` entry) where tune-ranking chose
    them, else the direct ones."""
    path = None if ckpt_dir is None else Path(ckpt_dir) / RANKING_FILE
    if path is None or not path.is_file():
        return RankingWeights()
    try:
        d = json.loads(path.read_text())
        if mode == "chain" and d.get("chain_ranking") is not None:
            d = d["chain_ranking"]
        w = RankingWeights(quality=float(d["quality"]), presence=float(d["presence"]), chosen_on=str(d["chosen_on"]))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(path, f"not a ranking file ({type(e).__name__}: {e}); rerun psg4d tune-ranking") from None
    if not all(math.isfinite(v) and v >= 0 for v in (w.quality, w.presence)):
        raise DataError(path, f"ranking weights must be finite and >= 0, got quality {w.quality}, presence {w.presence}")
    return w


def load_mode(ckpt_dir: str | Path | None) -> tuple[str, str] | None:
    """The prediction mode chosen on validation for a checkpoint trained on both texts (the
    ``mode`` entry ``psg4d tune-ranking`` writes into ``ranking.json``) and where it was chosen;
    None where nothing was chosen."""
    path = None if ckpt_dir is None else Path(ckpt_dir) / RANKING_FILE
    if path is None or not path.is_file():
        return None
    try:
        d = json.loads(path.read_text()).get("mode")
        return None if d is None else (str(d["chosen"]), str(d["chosen_on"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise DataError(path, f"not a ranking file ({type(e).__name__}: {e}); rerun psg4d tune-ranking") from None


#: the share of validation objects (all of training categories) the chosen unknown-object margin
#: keeps known: the usual open-set operating point, fixed a priori
KEEP_KNOWN = 0.95


def choose_unknown_margin(margins: "list[float]", keep: float = KEEP_KNOWN) -> float:
    """The smallest margin that keeps ``keep`` of ``margins`` (validation objects' reading margins,
    :meth:`psg4d.infer.chain_naming.ObjectNamer.gate_margins`) at or below it, i.e. known; 0 for none."""
    if not margins:
        return 0.0
    return round(float(np.quantile(np.asarray(margins, dtype=float), keep, method="inverted_cdf")), 4)


def load_unknown_margin(ckpt_dir: str | Path | None) -> tuple[float, str] | None:
    """The chained predictor's unknown-object margin chosen on validation for a checkpoint with an
    attribute head (the ``unknown_margin`` entry ``psg4d tune-ranking`` writes into ``ranking.json``)
    and where it was chosen; None where nothing was chosen."""
    path = None if ckpt_dir is None else Path(ckpt_dir) / RANKING_FILE
    if path is None or not path.is_file():
        return None
    try:
        d = json.loads(path.read_text()).get("unknown_margin")
        got = None if d is None else (float(d["margin"]), str(d["chosen_on"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise DataError(path, f"not a ranking file ({type(e).__name__}: {e}); rerun psg4d tune-ranking") from None
    if got is not None and not (math.isfinite(got[0]) and got[0] >= 0):
        raise DataError(path, f"unknown_margin must be finite and >= 0, got {got[0]}")
    return got


def ranking_record(weights: RankingWeights, table: list[dict], **provenance) -> dict:
    """The content of ``ranking.json``: the chosen weights, every weight pair tried with its
    validation scores, and where they were measured."""
    return {**asdict(weights), "tried": table, **provenance}


__all__ = ["FLOOR", "RANKING_FILE", "RankingWeights", "load_mode", "load_ranking", "load_unknown_margin",
           "KEEP_KNOWN", "choose_unknown_margin", "ranking_record"]
