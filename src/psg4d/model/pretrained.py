"""Checkpoint files of a :class:`~psg4d.model.psg4d_llm.PSG4DModel`: what trained, and what it stood on.

A checkpoint folder holds ``config.json`` (the header ``format: psg4d-model``, ``kind:
psg4d_llm``, ``version`` of :mod:`psg4d.families`, then the ``ModelConfig``, ``frozen_weights`` and
``weights_sha256``), ``model.safetensors`` and
``tokenizer/``. ``weights_sha256`` is the SHA-256 of ``model.safetensors`` as written; loading
refuses a file that no longer hashes to it (checkpoints written before it was recorded load
unverified).

``model.safetensors`` holds every parameter and buffer EXCEPT the frozen
parameters loaded from pretrained weight files (an ImageBind trunk, a LoRA-wrapped
LLaMA's base): those are referenced, not copied. ``frozen_weights`` records, per
weight source, the config field that names it, its absolute path, a SHA-256
fingerprint (:func:`psg4d.model.provenance.fingerprint`) and which parameters came
from it. Loading finds each source at its recorded path, else under
``$PSG4D_WEIGHTS`` by file name, and refuses one that is missing or whose
fingerprint differs: the stored weights were trained on top of exactly those.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from psg4d.config import from_dict, to_dict
from psg4d.errors import CheckpointError, ConfigError
from psg4d.families import FAMILIES, FORMAT, LLM_KIND, family_of_checkpoint, header
from psg4d.model.config import ModelConfig
from psg4d.model.llm import load_tokenizer
from psg4d.model.weight_files import (
    WEIGHTS_ENV, WEIGHTS_SHA256, check_file_sha256, file_sha256, fingerprint, replace_field, weight_field_of,
)
from psg4d.model.provenance import (
    check_finite, check_shapes, frozen_pretrained_sources, names_digest, pretrained_groups, pretrained_source,
)
from psg4d.utils.io import atomic_dir, atomic_write_json

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = FORMAT
# 2: the encoder's depth normalisation is a named scheme (``encoder.depth_norm``) and config.json
# records the frozen weights; version-1 checkpoints are read through :func:`_migrate_v1`.
CHECKPOINT_VERSION = FAMILIES[LLM_KIND].versions[-1]
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_DIR = "tokenizer"


def stored_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict to write: without frozen pretrained parameters (their sources reproduce
    them) and without tied duplicates (restored by tying)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    skip = {n for n, p in params.items() if not p.requires_grad and pretrained_source(p) is not None}
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for k, v in model.state_dict().items():
        if k in skip:
            continue
        ptr = v.data_ptr()
        if ptr in seen and v.numel() > 0:
            continue  # tied weight (e.g. lm_head = embed_tokens)
        seen.add(ptr)
        out[k] = v.detach().contiguous().cpu()
    return out


def frozen_weight_records(model: nn.Module) -> list[dict[str, Any]]:
    """One record per source of frozen pretrained parameters (see the module docstring)."""
    groups = pretrained_groups(model)
    records = []
    for source, frozen in sorted(frozen_pretrained_sources(model).items()):
        group = groups[source]
        rec = {
            "field": weight_field_of(model.config, source),
            "path": source,
            "sha256": fingerprint(source),
            "parameters": len(frozen),
            "group_sha256": names_digest(group),
        }
        if len(frozen) != len(group):  # part of a pretrained module trained: list what was left out
            rec["frozen"] = sorted(frozen)
        records.append(rec)
    return records


def save_pretrained(model: nn.Module, path: str | Path) -> None:
    from safetensors.torch import save_file

    path = Path(path)
    records = frozen_weight_records(model)
    with atomic_dir(path) as tmp:
        save_file(stored_state(model), str(tmp / WEIGHTS_FILE), metadata={"format": CHECKPOINT_FORMAT})
        model.tokenizer.save_pretrained(str(tmp / TOKENIZER_DIR))
        atomic_write_json(
            tmp / CONFIG_FILE,
            {**header(LLM_KIND), "model": to_dict(model.config),
             "frozen_weights": records, WEIGHTS_SHA256: file_sha256(tmp / WEIGHTS_FILE)},
            indent=2,
        )


def _read_meta(path: Path) -> dict[str, Any]:
    # the registry reads the header (and refuses another family's checkpoint or an unknown version)
    family = family_of_checkpoint(path)
    if family.kind != LLM_KIND:
        raise CheckpointError(f"{path}: a {family.title} checkpoint, not a 4D-LLM's")
    meta = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    if meta.get("version") == 1:
        meta = _migrate_v1(meta, path / CONFIG_FILE)
    return meta


# Version 1 stored the only depth normalisation there was as three numbers; these values are
# exactly the "inverse_metres" scheme.
_V1_DEPTH = {"depth_min": 0.1, "depth_mean": 0.5, "depth_std": 0.5}


def _migrate_v1(meta: dict[str, Any], where: Path) -> dict[str, Any]:
    """A version-1 config.json as version 2 (same weights; version 1 never left frozen weights out
    except a pretrained LLM's LoRA base, which the LLM's own source reproduces)."""
    model = dict(meta.get("model") or {})
    encoder = dict(model.get("encoder") or {})
    old = {k: encoder.pop(k) for k in list(_V1_DEPTH) if k in encoder}
    if any(abs(float(v) - _V1_DEPTH[k]) > 1e-12 for k, v in old.items()):
        raise CheckpointError(f"{where}: version-1 depth normalisation {old} has no named scheme; retrain")
    encoder.setdefault("depth_norm", "inverse_metres")
    model["encoder"] = encoder
    return {**meta, "version": CHECKPOINT_VERSION, "model": model, "frozen_weights": meta.get("frozen_weights", [])}


def read_config(path: str | Path) -> ModelConfig:
    """The ``ModelConfig`` of checkpoint folder ``path`` (CheckpointError if it is not one)."""
    path = Path(path)
    meta = _read_meta(path)
    try:
        return from_dict(ModelConfig, meta.get("model") or {}, where=str(path / CONFIG_FILE))
    except ConfigError as e:
        raise CheckpointError(str(e)) from None


def locate_frozen_weights(cfg: ModelConfig, records: list[dict[str, Any]], where: Path) -> ModelConfig:
    """``cfg`` with each recorded weight field pointing at the file found: the recorded path,
    else ``$PSG4D_WEIGHTS/<file name>`` (CheckpointError if neither exists)."""
    for rec in records:
        field = rec.get("field")
        if not field:
            continue  # a built-in source (a packaged file): the builder finds it
        recorded = Path(rec["path"])
        candidates = [recorded]
        if os.environ.get(WEIGHTS_ENV):
            candidates.append(Path(os.environ[WEIGHTS_ENV]).expanduser() / recorded.name)
        found = next((c for c in candidates if c.exists()), None)
        if found is None:
            raise CheckpointError(
                f"{where}: needs the frozen weights model.{field} = {recorded} (sha256 {rec['sha256'][:12]}...),"
                f" found neither there nor in ${WEIGHTS_ENV}; restore the file or set {WEIGHTS_ENV} to the folder"
                f" holding {recorded.name}"
            )
        cfg = replace_field(cfg, field, str(found))
    return cfg


def verify_frozen_weights(model: nn.Module, records: list[dict[str, Any]], where: Path) -> set[str]:
    """Check that the rebuilt model read the same frozen weights as the trained one; returns the
    names of the parameters those records cover (absent from ``model.safetensors``)."""
    by_digest = {names_digest(names): (src, names) for src, names in pretrained_groups(model).items()}
    covered: set[str] = set()
    for rec in records:
        label = f"model.{rec['field']}" if rec.get("field") else "the frozen weights"
        hit = by_digest.get(rec.get("group_sha256", ""))
        if hit is None:
            raise CheckpointError(
                f"{where}: the rebuilt model loads no pretrained parameters matching {label} {rec['path']}"
                f" ({rec['parameters']} parameters frozen in training)"
            )
        src, names = hit
        now = fingerprint(src)
        if now != rec["sha256"]:
            raise CheckpointError(
                f"{where}: {label} {src} differs from the weights this checkpoint was trained with"
                f" (sha256 {now[:12]}... != {rec['sha256'][:12]}...)"
            )
        covered.update(rec.get("frozen") or names)
    return covered


def load_pretrained(build: Callable[[ModelConfig], nn.Module], path: str | Path) -> nn.Module:
    """The model of checkpoint folder ``path``: ``build(config)`` (a model class's ``from_config``)
    with its frozen weights found and checked, then the stored weights loaded; eval mode."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    meta = _read_meta(path)
    cfg = read_config(path)
    records = list(meta.get("frozen_weights") or [])
    weights = path / WEIGHTS_FILE
    if not weights.exists():
        raise CheckpointError(f"{weights}: missing from the checkpoint")
    tok_dir = path / TOKENIZER_DIR
    if not (tok_dir / "tokenizer.json").exists():
        raise CheckpointError(f"{tok_dir / 'tokenizer.json'}: missing from the checkpoint")
    check_file_sha256(weights, meta.get(WEIGHTS_SHA256), recorded_in=path / CONFIG_FILE)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights}: unreadable or corrupted ({e})") from None
    check_finite(state.items(), weights)
    model = build(locate_frozen_weights(cfg, records, path))
    saved_tok = load_tokenizer(tok_dir)
    if saved_tok.get_vocab() != model.tokenizer.get_vocab():
        raise CheckpointError(f"{tok_dir}: tokenizer vocabulary differs from the one the config builds")
    covered = verify_frozen_weights(model, records, path)
    own = model.state_dict()
    # before the name check: a model of other sizes may also differ in names (more layers), and
    # the shapes say why
    check_shapes({k: v.shape for k, v in state.items()}, {k: v.shape for k, v in own.items()}, weights)
    expected = set(stored_state(model)) - covered
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"{weights}: missing tensors {missing[:5]}, unexpected tensors {unexpected[:5]}")
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        detail = " ".join(str(e).split())  # torch's text spans lines
        raise CheckpointError(f"{weights}: tensors do not fit the configured model: {detail}") from None
    model.eval()
    return model
