"""Fake sentence encoders for the label mapper's tests (the real one is all-MiniLM-L6-v2)."""

from __future__ import annotations

import numpy as np


class NoEncoder:
    """An encoder that must not be used (the lexical steps never need the model)."""

    def encode(self, texts):
        raise AssertionError(f"the model was asked to embed {list(texts)}")


class TableEncoder:
    """Fixed unit vectors per text (unknown texts: the zero vector, orthogonal to everything)."""

    def __init__(self, vectors: dict[str, list[float]], dim: int = 4):
        self.vectors = {k: np.asarray(v, np.float32) / np.linalg.norm(v) for k, v in vectors.items()}
        self.dim = dim
        self.calls: list[list[str]] = []

    def encode(self, texts):
        self.calls.append(list(texts))
        return np.stack([self.vectors.get(t, np.zeros(self.dim, np.float32)) for t in texts])
