"""PSG4DModel assembly: collate, forward/backward, overfitting, generation, checkpoints, presets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from psg4d.data.schema import MaskTube, ObjectTrack, Relation, Sample, SceneGraph4D, Video4D
from psg4d.errors import CheckpointError, DataError
from psg4d.model.config import model_preset
from psg4d.model.grammar import canonical_triplets, format_scene_graph, parse_scene_graph
from psg4d.model.llm import LLMConfig
from psg4d.model.psg4d_llm import PSG4DModel, remap_spans, resample_indices

CATS = ["person", "water dispenser", "cup", "table"]
# 17 predicates: 3 objects give 6 ordered pairs x 17 = 102 ranked candidates (R@100 needs >= 100)
PREDS = ["picking up", "holding", "next to", "on", "in front of", "looking at", "touching", "pouring",
         "drinking from", "standing by", "behind", "under", "carrying", "pushing", "opening", "wiping", "filling"]


def make_sample(seed: int, *, frames: int = 4, size: int = 32, depth: bool = True, n_obj: int = 3) -> Sample:
    """A hand-made sample: objects are boxes at seed-dependent places; 4 relations."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 255, (frames, size, size, 3), dtype=np.uint8)
    objs = []
    for i in range(n_obj):
        m = np.zeros((frames, size, size), bool)
        y, x = (i * 7 + seed) % (size - 10), (i * 11 + 3 * seed) % (size - 12)
        m[:, y : y + 8, x : x + 10] = True
        m[-1, :, :] = m[-1] if i else False  # the person leaves in the last frame
        rgb[m] = np.array([60 * i, 255 - 50 * i, 40 + 70 * i], dtype=np.uint8)  # colour tells objects apart
        objs.append(ObjectTrack(i, CATS[i], tube=MaskTube.from_dense(m)))
    last = frames - 1
    rels = [
        Relation(0, 1, "picking up", [(0, min(1, last))]),
        Relation(0, 2, "holding", [(min(1, last), last)]),
        Relation(2, 1, "next to", [(0, 0), (min(2, last), last)]),
    ]
    if n_obj > 3:
        rels.append(Relation(2, 3, "on", [(0, last)]))
    g = SceneGraph4D(f"v{seed}", frames, size, size, objs, rels, object_vocab=CATS, predicate_vocab=PREDS)
    d = rng.uniform(0.5, 3.0, (frames, size, size)).astype(np.float32) if depth else None
    return Sample(Video4D(rgb, d, video_id=g.video_id), g)


def tiny_config(**kw):
    """The tiny preset, shrunk further (2-layer LLM) so tests overfit in ~50 CPU steps."""
    cfg = model_preset("tiny")
    cfg.llm = LLMConfig(hidden_size=128, num_layers=2, num_heads=4, intermediate_size=256)
    cfg.object_vocab, cfg.predicate_vocab = list(CATS), list(PREDS)
    cfg.image_size, cfg.max_frames = 32, 4
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def overfit(model: PSG4DModel, sample: Sample, steps: int, lr: float = 6e-3) -> dict:
    torch.manual_seed(0)
    batch = model.collate([sample])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        out = model(**batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    model.eval()
    return {k: float(v.detach()) for k, v in out.items()}


_TRAINED: dict[str, tuple] = {}


def trained_model() -> tuple[PSG4DModel, Sample, dict]:
    """One overfitted tiny model per test session (the predictor tests reuse it; nobody mutates it)."""
    if "tiny" not in _TRAINED:
        torch.manual_seed(0)
        model = PSG4DModel.from_config(tiny_config())
        sample = make_sample(0)
        _TRAINED["tiny"] = (model, sample, overfit(model, sample, steps=55))
    return _TRAINED["tiny"]


@pytest.fixture(scope="module")
def trained():
    return trained_model()


def test_forward_backward_reaches_every_submodule():
    torch.manual_seed(0)
    model = PSG4DModel.from_config(tiny_config())
    batch = model.collate([make_sample(0), make_sample(1)])
    assert batch["rgb"].shape == (2, 4, 3, 32, 32) and batch["depth"].shape == (2, 4, 1, 32, 32)
    assert [t.shape[0] for t in batch["mask_targets"]] == [len(i) for i in batch["obj_ids"]] == [8, 8]
    prefix = len(model.prefix_ids())
    assert (batch["labels"][:, :prefix] == -100).all()
    # multi-hot of the categories each sample contains, in object_vocab order
    for b, s in enumerate((make_sample(0), make_sample(1))):
        present = {model.config.object_vocab[i] for i in torch.nonzero(batch["tags"][b]).flatten().tolist()}
        assert present == {o.category for o in s.graph.objects}
    out = model(**batch)
    assert set(out) >= {"loss", "loss_text", "loss_focal", "loss_dice", "loss_iou", "loss_tag"}
    assert all(torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    for name in ("encoder", "projector", "llm", "obj_proj", "mask_decoder", "tag_head"):
        grads = [p.grad for p in getattr(model, name).parameters() if p.grad is not None]
        assert grads and any(float(g.abs().sum()) > 0 for g in grads), name
        assert all(torch.isfinite(g).all() for g in grads), name


def test_obj_hidden_states_are_gathered_by_token_id():
    """Moving the [Obj] tokens (longer category names) must move the hidden states used."""
    model = PSG4DModel.from_config(tiny_config())
    a, b = make_sample(0), make_sample(0)
    b.graph.objects[0].category = "tall person with a hat"
    batch = model.collate([a, b])
    obj = model.ids.obj
    pos_a = (batch["input_ids"][0] == obj).nonzero().flatten()
    pos_b = (batch["input_ids"][1] == obj).nonzero().flatten()
    assert len(pos_a) == len(pos_b) and not torch.equal(pos_a, pos_b)
    assert torch.isfinite(model(**batch)["loss"])


def test_overfits_one_sample_and_generation_parses_back(trained):
    model, sample, losses = trained
    assert losses["loss_text"] < 0.1, losses
    gen = model.generate(sample.video, max_new_tokens=80)
    parsed = parse_scene_graph(gen.text, predicates=PREDS, num_frames=4)
    gt = format_scene_graph(sample.graph)
    rows = sorted((t.start, t.end, gt.obj_ids[t.subject_obj_index], t.predicate, gt.obj_ids[t.object_obj_index])
                  for t in parsed.triplets)
    assert rows == canonical_triplets(sample.graph)
    assert gen.obj_hidden.shape == (len(gt.obj_ids), model.hidden_size)
    assert len(gen.step_logprobs) == len(gen.token_ids) and all(lp <= 0 for lp in gen.step_logprobs)


def test_save_load_gives_identical_outputs(trained, tmp_path):
    model, sample, _ = trained
    model.save_pretrained(tmp_path / "ckpt")
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} == {"config.json", "model.safetensors", "tokenizer"}
    again = PSG4DModel.from_pretrained(tmp_path / "ckpt")
    g1, g2 = model.generate(sample.video, max_new_tokens=40), again.generate(sample.video, max_new_tokens=40)
    assert g1.token_ids == g2.token_ids
    torch.testing.assert_close(g1.obj_hidden, g2.obj_hidden)
    m1, _ = model.decode_masks(g1.context, g1.obj_hidden)
    m2, _ = again.decode_masks(g2.context, g2.obj_hidden)
    torch.testing.assert_close(m1, m2)


def test_checkpoint_errors(trained, tmp_path):
    model, _, _ = trained
    with pytest.raises(CheckpointError, match="not found"):
        PSG4DModel.from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json.*not a psg4d checkpoint"):
        PSG4DModel.from_pretrained(tmp_path / "empty")
    ck = tmp_path / "ck"
    model.save_pretrained(ck)
    (ck / "config.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match="not a psg4d checkpoint"):
        PSG4DModel.from_pretrained(ck)

    model.save_pretrained(ck)
    (ck / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors: missing"):
        PSG4DModel.from_pretrained(ck)

    model.save_pretrained(ck)
    data = (ck / "model.safetensors").read_bytes()
    (ck / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        PSG4DModel.from_pretrained(ck)

    from safetensors.torch import load_file, save_file

    model.save_pretrained(ck)
    state = load_file(str(ck / "model.safetensors"))
    dropped = sorted(k for k in state if k.startswith("obj_proj."))[0]
    del state[dropped]
    save_file(state, str(ck / "model.safetensors"))
    with pytest.raises(CheckpointError, match=dropped.replace(".", r"\.")):
        PSG4DModel.from_pretrained(ck)

    model.save_pretrained(ck)
    cfg = json.loads((ck / "config.json").read_text())
    cfg["model"]["llm"]["hidden_size"] = 96
    (ck / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="do not fit"):
        PSG4DModel.from_pretrained(ck)

    model.save_pretrained(ck)
    (ck / "tokenizer" / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        PSG4DModel.from_pretrained(ck)


def test_lora_on_a_random_tiny_llm_round_trips(tmp_path):
    """A LoRA-wrapped random base cannot be re-created from its source, so it must be stored."""
    cfg = tiny_config()
    cfg.llm.freeze_llm = True
    torch.manual_seed(1)
    model = PSG4DModel.from_config(cfg).eval()
    trainable = [n for n, p in model.llm.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "trainable_tokens" in n for n in trainable)
    batch = model.collate([make_sample(2)])
    model.save_pretrained(tmp_path / "ck")
    torch.manual_seed(2)  # a different random init if the base were rebuilt instead of loaded
    again = PSG4DModel.from_pretrained(tmp_path / "ck")
    with torch.no_grad():
        torch.testing.assert_close(model(**batch)["loss"], again(**batch)["loss"])


def test_rgb_depth_frame_mismatch_is_a_data_error(trained):
    model, _, _ = trained
    s = make_sample(3)
    s.video.depth = s.video.depth[:2]
    with pytest.raises(DataError, match="RGB has 4 frames, depth has 2"):
        model.collate([s])
    with pytest.raises(DataError, match="depth"):
        model.generate(s.video)
    bad = make_sample(4)
    bad.graph.num_frames = 7
    with pytest.raises(DataError, match="7 frames"):
        model.collate([bad])


def test_frame_counts_differ_from_training(trained):
    model, _, _ = trained
    long, short = make_sample(5, frames=7), make_sample(6, frames=2, depth=False)
    batch = model.collate([long, short])  # resampled to max_frames=4; RGB-only since one lacks depth
    assert batch["rgb"].shape[:2] == (2, 4) and batch["depth"] is None
    assert torch.isfinite(model(**batch)["loss"])
    for s in (long, short):
        gen = model.generate(s.video, max_new_tokens=12)
        assert gen.context.num_frames == min(s.video.num_frames, 4)


def test_span_remapping():
    idx = resample_indices(10, 4)
    assert idx.tolist() == [0, 3, 6, 9]
    assert remap_spans([(2, 7)], idx) == [(1, 2)]
    assert remap_spans([(4, 5)], idx) == [(1, 1)]  # between samples: nearest to its middle, first on ties
    assert remap_spans([(0, 0), (9, 9)], idx) == [(0, 0), (3, 3)]


def test_full_preset_wiring_on_meta_device():
    from transformers import LlamaConfig, LlamaForCausalLM

    from psg4d.model.encoder import build_encoder
    from psg4d.model.llm import add_special_tokens, apply_lora
    from psg4d.model.mask_decoder import build_mask_decoder
    from psg4d.model.projector import build_projector
    from psg4d.model.tokenizer import build_word_tokenizer

    cfg = model_preset("full")
    cfg.encoder.pretrained = False
    cfg.mask_decoder.pretrained = False
    llama7b = LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                          num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096)
    with torch.device("meta"):
        llm = LlamaForCausalLM(llama7b)
        assert sum(p.numel() for p in llm.parameters()) == 6_738_415_616  # LLaMA-2-7B
        tok = build_word_tokenizer(CATS + PREDS, max_frames=cfg.max_frames)
        new = add_special_tokens(llm, tok)
        llm = apply_lora(llm, cfg.llm, new)
        model = PSG4DModel(
            config=cfg,
            encoder=build_encoder(cfg.resolved_encoder()),
            projector=build_projector(cfg.projector.name, cfg.encoder.dim, 4096),
            llm=llm,
            obj_proj=torch.nn.Linear(4096, cfg.mask_decoder.transformer_dim),
            mask_decoder=build_mask_decoder(cfg.mask_decoder),
            tokenizer=tok,
        )
    lora = sum(p.numel() for n, p in model.llm.named_parameters() if "lora_" in n)
    assert lora == 32 * 4 * 2 * 4096 * cfg.llm.lora_rank  # q, k, v, o adapters in 32 layers
    base = [p for n, p in model.llm.named_parameters() if "lora_" not in n and "trainable" not in n]
    assert base and all(not p.requires_grad for p in base)
    enc = sum(p.numel() for p in model.encoder.parameters())
    dec = sum(p.numel() for p in model.mask_decoder.parameters())
    assert 640_000_000 < enc < 680_000_000  # ImageBind-Huge: ViT-H vision (~632M) + ViT-S depth (~21M) + heads
    assert 4_000_000 < dec < 20_000_000  # SAM2 decoder + memory attention sizes
    assert model.projector[0].in_features == cfg.encoder.dim == cfg.mask_decoder.in_dim == 1024
    assert model.projector[-1].out_features == 4096
    assert cfg.resolved_encoder().image_size == 224 and cfg.num_visual_tokens == cfg.encoder.max_tokens


@pytest.mark.slow
def test_smollm2_pretrained_train_step_and_generate(tmp_path):
    cfg = model_preset("smollm2-135m")
    cfg.object_vocab, cfg.predicate_vocab = list(CATS), list(PREDS)
    cfg.image_size, cfg.max_frames = 32, 4
    model = PSG4DModel.from_config(cfg)
    trainable = [n for n, p in model.llm.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "trainable_tokens" in n for n in trainable)
    losses = overfit(model, make_sample(0), steps=1, lr=1e-4)
    assert np.isfinite(losses["loss"])
    gen = model.generate(make_sample(0).video, max_new_tokens=6)
    assert 1 <= len(gen.token_ids) <= 6
    model.save_pretrained(tmp_path / "ck")
    assert (tmp_path / "ck" / "model.safetensors").stat().st_size < 100_000_000  # base weights not stored
    again = PSG4DModel.from_pretrained(tmp_path / "ck")
    assert again.generate(make_sample(0).video, max_new_tokens=6).token_ids == gen.token_ids


def test_tag_tokens_enter_the_llm_input_after_the_visual_tokens():
    torch.manual_seed(0)
    model = PSG4DModel.from_config(tiny_config(tag_tokens=3))
    base = PSG4DModel.from_config(tiny_config())
    sample = make_sample(0)
    enc, visual, tag_logits = model.encode(*[t for t in (model.collate([sample])["rgb"], None)])
    _, visual_base, _ = base.encode(base.collate([sample])["rgb"], None)
    assert visual.shape[1] == visual_base.shape[1] + 3 and tag_logits.shape == (1, len(CATS))
    # each tag token is (probability x) the mean embedding of one category name's words
    names = model._category_ids
    emb = model.llm.get_input_embeddings().weight
    probs = torch.sigmoid(tag_logits[0])
    top = probs.topk(3)
    for k in range(3):
        ids = names[top.indices[k]][names[top.indices[k]] >= 0]
        assert torch.allclose(visual[0, -3 + k], top.values[k] * emb[ids].mean(0), atol=1e-5)
    out = model(**model.collate([sample, make_sample(1)]))
    out["loss"].backward()
    assert model.tag_head.weight.grad is not None and torch.isfinite(out["loss"])
    ctx = model.encode_video(sample.video)
    assert ctx.prefix_embeds.shape[1] == len(model.prefix_ids()) - 1 + visual.shape[1]
