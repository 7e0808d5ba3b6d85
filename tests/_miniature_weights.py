"""Miniature pretrained weights in the official layouts, for running the paper-size (`full`) code
path end to end on a CPU: an ImageBind checkpoint (``imagebind_huge.pth``'s key names, the
``test`` size), a SAM2.1 checkpoint written by the ``sam2`` package's own builder from a shrunk
config, and a LLaMA-architecture folder in the Hugging Face layout (``config.json``,
``model.safetensors``, a fast tokenizer). Random weights: they prove the wiring, not the quality."""

from __future__ import annotations

from pathlib import Path

import torch

# the words of the synthetic world's graphs, so its texts tokenise into a few tokens each
_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789;:,.()_-'"


def imagebind_checkpoint(path: Path) -> Path:
    from test_model_vision_backbones import _imagebind_state_dict

    from psg4d.model.imagebind import IMAGEBIND_SIZES

    torch.save(_imagebind_state_dict(IMAGEBIND_SIZES["test"]), path)
    return path


SAM2_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
SAM2_IMAGE_SIZE = 128


def sam2_checkpoint(path: Path) -> Path:
    """``{"model": state_dict}`` as the released ``sam2.1_hiera_*.pt`` files hold it."""
    from sam2.build_sam import build_sam2

    from psg4d.model.sam2_build import SAM2_SIZES

    torch.manual_seed(0)
    model = build_sam2(SAM2_CONFIG, ckpt_path=None, device="cpu", apply_postprocessing=False,
                       hydra_overrides_extra=[*SAM2_SIZES["tiny"], f"++model.image_size={SAM2_IMAGE_SIZE}"])
    torch.save({"model": model.state_dict()}, path)
    return path


def llama_folder(folder: Path, words: list[str]) -> Path:
    """A 2-layer LLaMA with a word-piece tokenizer over ``words`` and characters, saved the way
    ``transformers`` saves LLaMA-2 (no psg4d tokens: loading adds them and resizes the embeddings)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for tok in ["<unk>", "<s>", "</s>", *_CHARS, *("##" + c for c in _CHARS),
                *sorted({w.lower() for phrase in words for w in phrase.split()})]:
        vocab.setdefault(tok, len(vocab))
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="<unk>", max_input_chars_per_word=100))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
                      bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"], tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def full_preset_overrides(weights: dict[str, Path], data_root: Path) -> list[str]:
    """``--set`` values that point a ``full`` preset at the miniature weights and shrink what
    depends on their sizes; everything else (the stages, their trainable modules, LoRA, the
    frozen trunks, the data formats) is the preset's own."""
    return [
        f"data.root={data_root}", "data.num_workers=0",
        f"model.encoder.weights_path={weights['imagebind']}", "model.encoder.imagebind_size=test",
        "model.encoder.dim=24", "model.encoder.image_size=56", "model.encoder.merge_grid=4",
        "model.encoder.max_tokens=32", "model.num_visual_tokens=32", "model.image_size=56",
        "model.max_frames=4", "model.max_new_tokens=24",
        f"model.llm.name={weights['llama']}", "model.llm.lora_rank=4", "model.llm.lora_alpha=8",
        "model.llm.max_position_embeddings=1024",
        f"model.mask_decoder.weights_path={weights['sam2']}", f"model.mask_decoder.sam2.config={SAM2_CONFIG}",
        "model.mask_decoder.sam2.size=tiny", f"model.mask_decoder.sam2.image_size={SAM2_IMAGE_SIZE}",
        "model.mask_decoder.train_frames=4",
        "train.device=cpu", "train.grad_accum=1", "train.warmup_steps=0", "train.num_threads=1",
        "train.val_max_videos=1", "train.val_every=1000", "train.save_every=1000",
    ]
