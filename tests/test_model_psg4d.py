"""PSG4DModel assembly: collate, forward/backward, overfitting, generation, checkpoints, presets."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from psg4d.data.schema import MaskTube, ObjectTrack, Relation, Sample, SceneGraph4D, Video4D
from psg4d.families import family_of_checkpoint
from psg4d.errors import CheckpointError, DataError
from psg4d.model.config import model_preset
from psg4d.model.grammar import canonical_triplets, format_scene_graph, parse_scene_graph
from psg4d.model.llm import LLMConfig
from psg4d.model.batching import (
    remap_spans,
    resample_indices,
    resampled_graph,
    sample_prompts,
    semantic_target,
    video_tensors,
)
from psg4d.model.generation import SceneGraphGenerator
from psg4d.model.psg4d_llm import PSG4DModel
from psg4d.model.weight_files import file_sha256

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
    # 32x32 frames give 8x8 maps: a 4x4 token grid (no merging at 4 frames) and no segmentation
    # loss keep the one-sample overfit stable at the tests' high learning rate
    cfg.encoder = replace(cfg.encoder, merge_grid=4)
    cfg.seg_loss_weight = 0.0
    cfg.tag_words, cfg.tag_source, cfg.obj_cls_loss_weight = False, "head", 0.0  # tested on their own below
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def overfit(model: PSG4DModel, sample: Sample, steps: int, lr: float = 6e-3, *, until=None,
            check_every: int = 10, text_loss_below: float | None = None) -> dict:
    """High-lr steps on one sample: ``steps``, or with ``until(model) -> bool`` (checked in eval mode
    every ``check_every`` steps) until it holds, at most ``steps``. The trajectory is sensitive to
    float summation order, so the thread count is pinned (other tests change it) and gradients are
    clipped as the training loop does (train.max_grad_norm). With ``text_loss_below``, ``until`` counts
    only once the training text loss is also below it (generation can match while the loss is still
    high, and which comes first depends on the initialisation)."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        batch = model.collate([sample])
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
        model.train()
        for step in range(1, steps + 1):
            out = model(**batch)
            opt.zero_grad()
            out["loss"].backward()
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
            opt.step()
            low = text_loss_below is None or float(out["loss_text"].detach()) < text_loss_below
            if until is not None and step % check_every == 0 and low:
                model.eval()
                done = until(model)
                model.train()
                if done:
                    break
    finally:
        torch.set_num_threads(threads)
    model.eval()
    return {k: float(v.detach()) for k, v in out.items()} | {"steps": step}


def generates_ground_truth(sample: Sample):
    """``until`` for :func:`overfit`: greedy generation writes exactly the sample's graph text."""
    gt = format_scene_graph(resampled_graph(sample.graph, np.arange(sample.video.num_frames)))

    def check(model: PSG4DModel) -> bool:
        with torch.no_grad():
            return SceneGraphGenerator(model).generate(sample.video, max_new_tokens=80).text == gt.text

    return check


_TRAINED: dict[str, tuple] = {}


def trained_model() -> tuple[PSG4DModel, Sample, dict]:
    """One overfitted tiny model per test session (the predictor tests reuse it; nobody mutates it)."""
    if "tiny" not in _TRAINED:
        torch.manual_seed(0)
        model = PSG4DModel.from_config(tiny_config())
        sample = make_sample(0)
        # until the text is memorised, not a fixed step count: the trajectory depends on the
        # machine's float summation order
        _TRAINED["tiny"] = (model, sample, overfit(model, sample, steps=200, check_every=10,
                                                   until=generates_ground_truth(sample), text_loss_below=0.1))
    return _TRAINED["tiny"]


@pytest.fixture(scope="module")
def trained():
    return trained_model()


def test_forward_backward_reaches_every_submodule():
    torch.manual_seed(0)
    model = PSG4DModel.from_config(tiny_config(seg_loss_weight=1.0, tag_words=True, obj_cls_loss_weight=1.0))
    batch = model.collate([make_sample(0), make_sample(1)])
    assert batch["rgb"].shape == (2, 4, 3, 32, 32) and batch["depth"].shape == (2, 4, 1, 32, 32)
    assert [t.shape[0] for t in batch["mask_targets"]] == [len(i) for i in batch["obj_ids"]] == [8, 8]
    # labels: -100 on bos, visual tokens and prompt; the target text (and <eos>) after it
    with torch.no_grad():
        keys = ("target_ids", "target_mask", "rgb", "depth", "disparity_scale")
        tf = model.teacher_forced(**{k: batch[k] for k in keys})
    for b in range(2):
        n_target = int(batch["target_mask"][b].sum())
        labelled = tf.labels[b][tf.labels[b] != -100]
        assert labelled.tolist() == batch["target_ids"][b][:n_target].tolist()
        first = int(torch.nonzero(tf.labels[b] != -100)[0])
        assert tf.ids[b][first:first + n_target].tolist() == labelled.tolist()
    # multi-hot of the categories each sample contains, in object_vocab order
    for b, s in enumerate((make_sample(0), make_sample(1))):
        present = {model.config.object_vocab[i] for i in torch.nonzero(batch["tags"][b]).flatten().tolist()}
        assert present == {o.category for o in s.graph.objects}
    out = model(**batch)
    assert set(out) >= {"loss", "loss_text", "loss_focal", "loss_dice", "loss_iou", "loss_tag", "loss_seg",
                        "loss_obj_cls"}
    assert all(torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    for name in ("encoder", "projector", "llm", "obj_proj", "mask_decoder", "tag_head", "seg_head", "obj_cls_head"):
        grads = [p.grad for p in getattr(model, name).parameters() if p.grad is not None]
        assert grads and any(float(g.abs().sum()) > 0 for g in grads), name
        assert all(torch.isfinite(g).all() for g in grads), name


def test_obj_hidden_states_are_gathered_by_token_id():
    """Each [Obj] occurrence's mask prompt is the hidden state at ITS position: moving the [Obj]
    tokens (a longer category name) moves the states the decoder gets, and sample b's prompts are
    exactly its own rows of the LLM output (not a fixed offset, not another sample's)."""
    torch.manual_seed(0)
    model = PSG4DModel.from_config(tiny_config()).eval()
    a, b = make_sample(0), make_sample(0)
    b.graph.objects[0].category = "tall person with a hat"
    batch = model.collate([a, b])
    with torch.no_grad():
        tf = model.teacher_forced(**{k: batch[k] for k in ("target_ids", "target_mask", "rgb", "depth",
                                                          "disparity_scale")})
    obj = model.ids.obj
    pos_a = (tf.ids[0] == obj).nonzero().flatten()
    pos_b = (tf.ids[1] == obj).nonzero().flatten()
    assert len(pos_a) == len(pos_b) == len(batch["obj_ids"][0]) and not torch.equal(pos_a, pos_b)
    # record what the decoder is prompted with during the loss
    seen: list[torch.Tensor] = []
    decode = model.mask_decoder.decode
    model.mask_decoder.decode = lambda dense, prompts: (seen.append(prompts), decode(dense, prompts))[1]
    try:
        with torch.no_grad():
            model(**batch)
    finally:
        del model.mask_decoder.decode
    assert len(seen) == 2
    with torch.no_grad():
        for sample, pos, prompts in ((0, pos_a, seen[0]), (1, pos_b, seen[1])):
            torch.testing.assert_close(prompts, model.obj_proj(tf.hidden[sample, pos]))
            # and each row is its own position's state: the states at different [Obj] differ
            assert not torch.allclose(prompts[0], prompts[1])
        # sample b's states differ from a's where the token positions moved
        assert not torch.allclose(seen[0], seen[1])


def test_overfits_one_sample_and_generation_parses_back(trained):
    model, sample, losses = trained
    assert losses["loss_text"] < 0.1 and losses["steps"] < 200, losses
    gen = SceneGraphGenerator(model).generate(sample.video, max_new_tokens=80)
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
    gen1, gen2 = SceneGraphGenerator(model), SceneGraphGenerator(again)
    g1, g2 = gen1.generate(sample.video, max_new_tokens=40), gen2.generate(sample.video, max_new_tokens=40)
    assert g1.token_ids == g2.token_ids
    torch.testing.assert_close(g1.obj_hidden, g2.obj_hidden)
    m1, _ = gen1.decode_masks(g1.context, g1.obj_hidden)
    m2, _ = gen2.decode_masks(g2.context, g2.obj_hidden)
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

    # the registry's header; a checkpoint written before it carried "kind" is still the 4D-LLM's
    ck = tmp_path / "ck_head"
    model.save_pretrained(ck)
    meta = json.loads((ck / "config.json").read_text())
    assert list(meta)[:3] == ["format", "kind", "version"]
    assert (meta["format"], meta["kind"], meta["version"]) == ("psg4d-model", "psg4d_llm", 2)
    del meta["kind"]
    (ck / "config.json").write_text(json.dumps(meta))
    assert family_of_checkpoint(ck).kind == "psg4d_llm"
    PSG4DModel.from_pretrained(ck)
    (ck / "config.json").write_text(json.dumps({**meta, "kind": "pipeline", "version": 1}))
    with pytest.raises(CheckpointError, match="a pipeline baseline checkpoint, not a 4D-LLM's"):
        PSG4DModel.from_pretrained(ck)
    (ck / "config.json").write_text(json.dumps({**meta, "version": 3}))
    with pytest.raises(CheckpointError, match="4D-LLM checkpoint version 3; this psg4d reads version 1, 2"):
        PSG4DModel.from_pretrained(ck)

    ck = tmp_path / "ck2"
    model.save_pretrained(ck)
    (ck / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors: missing"):
        PSG4DModel.from_pretrained(ck)

    ck = tmp_path / "ck3"
    model.save_pretrained(ck)
    data = (ck / "model.safetensors").read_bytes()
    (ck / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        PSG4DModel.from_pretrained(ck)

    from safetensors.torch import load_file, save_file

    ck = tmp_path / "ck4"
    model.save_pretrained(ck)
    state = load_file(str(ck / "model.safetensors"))
    dropped = sorted(k for k in state if k.startswith("obj_proj."))[0]
    del state[dropped]
    save_file(state, str(ck / "model.safetensors"))
    cfg = json.loads((ck / "config.json").read_text())
    cfg["weights_sha256"] = file_sha256(ck / "model.safetensors")  # rewritten on purpose, not damaged
    (ck / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=dropped.replace(".", r"\.")):
        PSG4DModel.from_pretrained(ck)

    ck = tmp_path / "ck5"
    model.save_pretrained(ck)
    cfg = json.loads((ck / "config.json").read_text())
    cfg["model"]["llm"]["hidden_size"] = 96
    (ck / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="do not fit"):
        PSG4DModel.from_pretrained(ck)

    ck = tmp_path / "ck6"
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
        SceneGraphGenerator(model).generate(s.video)
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
        gen = SceneGraphGenerator(model).generate(s.video, max_new_tokens=12)
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
    cfg.mask_decoder.sam2.frozen = []  # freezing needs the weights (test_model_sam2_tubes.py loads and freezes)
    llama7b = LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                          num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096)
    # SAM2's Hiera computes its drop-path schedule with .item(): built on the CPU (~0.9 GB)
    mask_decoder = build_mask_decoder(cfg.mask_decoder)
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
            obj_proj=torch.nn.Linear(4096, 256),
            mask_decoder=mask_decoder,
            tokenizer=tok,
        )
    lora = sum(p.numel() for n, p in model.llm.named_parameters() if "lora_" in n)
    assert lora == 32 * 4 * 2 * 4096 * cfg.llm.lora_rank  # q, k, v, o adapters in 32 layers
    base = [p for n, p in model.llm.named_parameters() if "lora_" not in n and "trainable" not in n]
    assert base and all(not p.requires_grad for p in base)
    enc = sum(p.numel() for p in model.encoder.parameters())
    dec = sum(p.numel() for p in model.mask_decoder.parameters())
    assert 640_000_000 < enc < 680_000_000  # ImageBind-Huge: ViT-H vision (~632M) + ViT-S depth (~21M) + heads
    # SAM2.1 Hiera-L as released: image encoder, memory attention and encoder, prompt encoder, decoder
    assert 215_000_000 < dec < 235_000_000, dec
    assert model.mask_decoder.dim == 256 and model.mask_decoder.image_size == 1024
    assert model.projector[0].in_features == cfg.encoder.dim == 1024
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
    gen = SceneGraphGenerator(model).generate(make_sample(0).video, max_new_tokens=6)
    assert 1 <= len(gen.token_ids) <= 6
    model.save_pretrained(tmp_path / "ck")
    assert (tmp_path / "ck" / "model.safetensors").stat().st_size < 100_000_000  # base weights not stored
    again = PSG4DModel.from_pretrained(tmp_path / "ck")
    assert SceneGraphGenerator(again).generate(make_sample(0).video, max_new_tokens=6).token_ids == gen.token_ids


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
    ctx = SceneGraphGenerator(model).encode_video(sample.video)
    assert ctx.prefix_embeds.shape[1] == len(model.prompt.prefix_ids()) - 1 + visual.shape[1]


def test_semantic_target_paints_each_objects_category():
    sample = make_sample(0)
    vocab = {c: i for i, c in enumerate(CATS)}
    sem = semantic_target(sample.graph, np.arange(4), 32, vocab)  # [T, S, S]
    assert sem.shape == (4, 32, 32) and sem.dtype == torch.long
    expected = np.full((4, 32, 32), len(CATS))
    for o in sample.graph.objects:  # disjoint boxes; the person is absent in the last frame
        expected[o.tube.to_dense()] = vocab[o.category]
    assert np.array_equal(sem.numpy(), expected)
    assert (sem[3] != vocab["person"]).all() and (sem[0] == vocab["person"]).sum() == 80
    # resampled frames and a smaller size: nearest, so a box stays a box
    small = semantic_target(sample.graph, np.array([0, 3]), 16, vocab)
    assert small.shape == (2, 16, 16) and (small[0] == vocab["person"]).sum() == 20
    # categories outside the vocabulary are unlabelled
    assert (semantic_target(sample.graph, np.arange(4), 32, {"cup": 0}) <= 1).all()


def test_sample_prompts_takes_every_object_before_repeats():
    obj_ids = [5, 5, 5, 7, 5, 9, 7, 5]
    keep = torch.tensor([True, True, True, True, True, True, True, False])
    for seed in range(20):
        torch.manual_seed(seed)
        chosen = sample_prompts(keep, obj_ids, 3)
        assert int(chosen.sum()) == 3 and not chosen[7]
        assert sorted(obj_ids[i] for i in torch.nonzero(chosen).flatten().tolist()) == [5, 7, 9]
        five = sample_prompts(keep, obj_ids, 5)
        objs = [obj_ids[i] for i in torch.nonzero(five).flatten().tolist()]
        assert int(five.sum()) == 5 and set(objs) == {5, 7, 9} and not five[7]
    # without object ids: a plain random subset of the valid occurrences
    assert int(sample_prompts(keep, None, 4).sum()) == 4


def test_segmentation_loss_hand_computed():
    """Uniform logits cost exactly log(C) whatever the class balance (weights average to 1)."""
    torch.manual_seed(0)
    model = PSG4DModel.from_config(tiny_config(seg_loss_weight=1.0))
    n_cls = len(CATS) + 1
    assert model.seg_head.out_channels == n_cls
    with torch.no_grad():
        model.seg_head.weight.zero_()
        model.seg_head.bias.zero_()
    batch = model.collate([make_sample(0), make_sample(1)])
    assert batch["semantic"].shape == (2, 4, 32, 32)
    dense = torch.randn(2, 4, model.config.encoder.dim, 8, 8)
    loss = model.segmentation_loss(dense, batch["semantic"])
    assert abs(float(loss) - float(np.log(n_cls))) < 1e-5
    # labels constant over each 4x4 cell (one-hot soft targets) and a head that reads them from
    # the features with logit margin 20: the loss is ~ (C - 1) e^-20
    cells = torch.randint(0, n_cls, (2, 4, 8, 8), generator=torch.Generator().manual_seed(1))
    semantic = cells.repeat_interleave(4, -1).repeat_interleave(4, -2)  # [2, 4, 32, 32]
    dense = torch.zeros_like(dense)
    dense[:, :, :n_cls] = torch.nn.functional.one_hot(cells, n_cls).permute(0, 1, 4, 2, 3).float()
    with torch.no_grad():
        model.seg_head.weight[:, :n_cls, 0, 0] = 20 * torch.eye(n_cls)
    assert float(model.segmentation_loss(dense, semantic)) < 1e-6
    # the wrong class everywhere costs the margin
    wrong = (cells + 1) % n_cls
    dense[:, :, :n_cls] = torch.nn.functional.one_hot(wrong, n_cls).permute(0, 1, 4, 2, 3).float()
    assert float(model.segmentation_loss(dense, semantic)) == pytest.approx(20.0, abs=1e-3)


def test_tag_words_prefix_noise_and_prediction():
    torch.manual_seed(0)
    model = PSG4DModel.from_config(tiny_config(tag_words=True, tag_word_noise=0.0))
    tok, prompt = model.tokenizer, model.prompt
    # vocabulary order (person, water dispenser, cup, table), whatever order they are given in
    text = tok.decode(prompt.prefix_ids(["cup", "person", "cup"]))
    assert text == "<s> [Video] objects : person , cup scene graph :"
    assert tok.decode(prompt.prefix_ids()) == "<s> [Video] scene graph :"
    assert tok.decode(prompt.prefix_ids([])) == "<s> [Video] objects : scene graph :"
    # training tags: noise 0 -> exactly the predicted vocabulary categories; noise 1 -> all dropped, none added
    assert prompt.training_tags(["cup", "person", "kettle", "cup"]) == ["cup", "person"]
    prompt.tag_word_noise = 1.0
    assert all(prompt.training_tags(["cup", "person"]) == [] for _ in range(5))
    prompt.tag_word_noise = 0.0
    # prediction: probability >= tag_threshold (0.5) in vocabulary order
    assert model.predicted_tags(torch.tensor([3.0, -1.0, 0.0, -0.1])) == ["person", "cup"]
    with torch.no_grad():
        model.tag_head.bias.copy_(torch.tensor([-20.0, 20.0, -20.0, 20.0]))  # logits ~ bias
        model.tag_head.weight.zero_()
    model.eval()
    ctx = SceneGraphGenerator(model).encode_video(make_sample(0).video)
    assert ctx.tags == ["water dispenser", "table"]
    n_vis = ctx.prefix_embeds.shape[1] - len(prompt.prefix_ids(ctx.tags)) + 1
    assert n_vis == 64  # the visual tokens, then exactly the tag words and the prompt


def _prompt_words(model, tf, b: int) -> str:
    """The decoded prompt (after the visual tokens) of sample ``b`` of a teacher-forced pass."""
    ids = tf.ids[b][tf.labels[b] == -100].tolist()  # everything before the target (and padding)
    return model.tokenizer.decode([i for i in ids if i not in (model.ids.video, model.ids.pad)])


def test_prompts_hold_predicted_tags_never_the_ground_truth():
    """Training and eval-mode teacher forcing (val loss, teacher-forced mask hit) write the
    model's own tags into the prompt, exactly what inference writes; training only drops some.
    A training prompt never holds a category inference could not have produced."""
    torch.manual_seed(0)
    model = PSG4DModel.from_config(tiny_config(tag_words=True, tag_word_noise=0.0))
    with torch.no_grad():
        model.tag_head.bias.copy_(torch.tensor([-20.0, 20.0, -20.0, 20.0]))  # predicts water dispenser, table
        model.tag_head.weight.zero_()
    sample = make_sample(0)  # contains person, water dispenser, cup
    batch = model.collate([sample])
    assert "gold_tags" not in batch
    keys = ("target_ids", "target_mask", "rgb", "depth", "disparity_scale")
    model.eval()
    with torch.no_grad():
        tf = model.teacher_forced(**{k: batch[k] for k in keys})
    assert tf.prompt_tags == [["water dispenser", "table"]]
    assert _prompt_words(model, tf, 0) == "<s> objects : water dispenser , table scene graph :"
    ctx = SceneGraphGenerator(model).encode_video(sample.video)
    assert tf.prompt_tags[0] == ctx.tags  # what inference writes
    model.train()
    with torch.no_grad():
        tf = model.teacher_forced(**{k: batch[k] for k in keys})
    assert _prompt_words(model, tf, 0) == "<s> objects : water dispenser , table scene graph :"
    # with dropout: subsets of the predicted tags only (never person or cup, which only the ground truth has)
    model.prompt.tag_word_noise = 0.5
    seen = set()
    with torch.no_grad():
        for _ in range(24):
            tags = model.teacher_forced(**{k: batch[k] for k in keys}).prompt_tags[0]
            assert set(tags) <= {"water dispenser", "table"}, tags
            seen.add(tuple(tags))
    assert len(seen) >= 3  # the dropout does drop, and not always the same tags


def test_obj_category_loss_hand_computed():
    torch.manual_seed(0)
    model = PSG4DModel.from_config(tiny_config(obj_cls_loss_weight=1.0))
    with torch.no_grad():
        model.obj_cls_head.weight.zero_()
        model.obj_cls_head.bias.zero_()
    sample = make_sample(0)
    batch = model.collate([sample])
    cats = {o.object_id: o.category for o in sample.graph.objects}
    assert batch["obj_categories"][0].tolist() == [CATS.index(cats[i]) for i in batch["obj_ids"][0]]
    out = model(**batch)
    assert float(out["loss_obj_cls"]) == pytest.approx(np.log(len(CATS)), abs=1e-5)
    # only "cup" is right: logit 30 for it everywhere -> loss ~30 on the others, 0 on the cups
    with torch.no_grad():
        model.obj_cls_head.bias[CATS.index("cup")] = 30.0
    n_cup = sum(cats[i] == "cup" for i in batch["obj_ids"][0])
    n = len(batch["obj_ids"][0])
    assert float(model(**batch)["loss_obj_cls"]) == pytest.approx(30.0 * (n - n_cup) / n, abs=1e-3)


def test_tag_words_model_overfits_and_generates_from_predicted_tags():
    torch.manual_seed(0)
    model = PSG4DModel.from_config(tiny_config(tag_words=True, tag_word_noise=0.0, obj_cls_loss_weight=1.0))
    sample = make_sample(0)
    losses = overfit(model, sample, steps=80)
    assert losses["loss_text"] < 0.1 and losses["loss_obj_cls"] < 0.5, losses
    generator = SceneGraphGenerator(model)
    ctx = generator.encode_video(sample.video)
    assert sorted(ctx.tags) == sorted(o.category for o in sample.graph.objects)
    gen = generator.generate(ctx, max_new_tokens=80)
    gt = format_scene_graph(resampled_graph(sample.graph, np.arange(4)))
    assert gen.text == gt.text


class _ScriptedLLM(torch.nn.Module):
    """Stands in for the LLM in ``generate``: emits ``script`` token by token (one per pass),
    hidden state = the pass number, so dropped [Obj] states can be identified."""

    def __init__(self, real, script: list[int]):
        super().__init__()
        self.real, self.script, self.calls = real, script, 0

    def get_input_embeddings(self):
        return self.real.get_input_embeddings()

    def forward(self, *, inputs_embeds, attention_mask=None, use_cache=True, output_hidden_states=False, **cache):
        from types import SimpleNamespace

        vocab = self.real.get_input_embeddings().weight.shape[0]
        n = inputs_embeds.shape[1]
        logits = torch.zeros(1, n, vocab)
        logits[0, -1, self.script[min(self.calls, len(self.script) - 1)]] = 10.0
        hidden = torch.full((1, n, inputs_embeds.shape[-1]), float(self.calls))
        self.calls += 1
        return SimpleNamespace(logits=logits, hidden_states=(hidden,), cache=None, past_key_values=None)


def test_generate_drops_repeated_triplets_and_stops_on_a_loop():
    torch.manual_seed(0)
    model = PSG4DModel.from_config(tiny_config()).eval()
    text = model.prompt.text_ids
    trip = text("cup [Obj] on table [Obj] 0 1")
    other = text("person [Obj] holding cup [Obj] 1 3")
    sep = text(";")
    script = trip + sep + other + sep + trip + sep + trip + sep + other + sep + trip + sep + trip + sep
    ctx = SceneGraphGenerator(model).encode_video(make_sample(0).video)
    model.llm = _ScriptedLLM(model.llm, script + [model.ids.eos])
    generator = SceneGraphGenerator(model)
    gen = generator.generate(ctx, max_new_tokens=200, max_repeats=3)
    assert gen.text == "cup [Obj] on table [Obj] 0 1 ; person [Obj] holding cup [Obj] 1 3 ;"
    assert len(gen.step_logprobs) == len(gen.token_ids) == 2 * (len(trip) + 1)
    # [Obj] states of the kept triplets only: passes right after each kept [Obj] was fed
    obj_pos = [i for i, t in enumerate(gen.token_ids) if t == model.ids.obj]
    assert gen.obj_hidden[:, 0].tolist() == [float(p + 1) for p in obj_pos]
    # without dropping, the repeats stay (up to the token limit)
    model.llm.calls = 0
    gen = generator.generate(ctx, max_new_tokens=len(script), max_repeats=None)
    assert gen.text.count("cup [Obj] on table [Obj] 0 1") == 5


def test_segmentation_tags_from_the_argmax_area():
    from psg4d.errors import ConfigError

    torch.manual_seed(0)
    model = PSG4DModel.from_config(tiny_config(tag_words=True, seg_loss_weight=1.0, tag_source="segmentation",
                                               tag_min_area=0.1))
    n_cls = len(CATS) + 1
    # a head that copies channel c of the features to class c: the argmax is the feature's argmax
    with torch.no_grad():
        model.seg_head.weight.zero_()
        model.seg_head.bias.zero_()
        model.seg_head.weight[:, :n_cls, 0, 0] = torch.eye(n_cls)
    dense = torch.zeros(2, model.config.encoder.dim, 8, 8)  # [T, D, h, w]
    dense[:, len(CATS)] = 1.0  # unlabelled everywhere ...
    dense[:, 2, :4, :4] = 5.0  # ... but "cup" on a quarter of both frames
    dense[0, 0, 0, 0] = 5.0  # "person" on 1 cell of one frame: 1/128 of the clip, under 0.1
    assert model.segmentation_tags(dense) == ["cup"]
    model.config.tag_min_area = 0.005
    assert model.segmentation_tags(dense) == ["person", "cup"]
    # the inference prompt uses them
    ctx = SceneGraphGenerator(model).encode_video(make_sample(0).video)
    with torch.no_grad():
        expected = model.segmentation_tags(model.encode(*[t[None] for t in _video(model)])[0].dense[0])
    assert ctx.tags == expected
    with pytest.raises(ConfigError, match="tag_source"):
        tiny_config(tag_words=True, tag_source="detector").__post_init__()
    with pytest.raises(ConfigError, match="seg_loss_weight"):
        tiny_config(tag_words=True, tag_source="segmentation", seg_loss_weight=0.0).__post_init__()


def _video(model):
    video = make_sample(0).video
    idx = resample_indices(video.num_frames, min(video.num_frames, model.config.max_frames))
    return video_tensors(video, idx, model.config.image_size)


def test_presence_head_trains_and_empties_absent_frames():
    """With SAM2's object-presence head (pred_obj_scores, the full preset's setting) the loss
    supervises it, every trainable decoder parameter gets a gradient (DDP needs no
    find_unused_parameters) and inference empties the frames it scores absent."""
    from psg4d.model.mask_decoder import NO_OBJECT_LOGIT, TubeDecoderOutput

    torch.manual_seed(0)
    cfg = tiny_config()
    # the full preset's decoder layout (presence head, memory attention), at the tiny width
    cfg.mask_decoder = replace(cfg.mask_decoder, pred_obj_scores=True, pred_obj_scores_mlp=True, memory_layers=1)
    model = PSG4DModel.from_config(cfg)
    assert model.mask_decoder.has_presence_head
    batch = model.collate([make_sample(0)])
    out = model(**batch)
    assert "loss_presence" in out and float(out["loss_presence"].detach()) > 0
    out["loss"].backward()
    unused = model.unused_parameters()
    for name, p in model.named_parameters():
        if p.requires_grad and name not in unused:
            assert p.grad is not None, name  # nothing trainable is left out of the graph
    head = [p.grad for n, p in model.mask_decoder.named_parameters() if "obj_score" in n]
    assert head and all(float(g.abs().sum()) > 0 for g in head)
    # the person (object 0) is absent in the last frame: a presence head that learned that gates it
    model.eval()
    mask_logits = torch.full((2, 4, 8, 8), 5.0)
    object_logits = torch.tensor([[3.0, 3.0, 3.0, -3.0], [3.0, -1.0, 3.0, 3.0]])
    gated = model.mask_decoder.gate_absent(TubeDecoderOutput(mask_logits, torch.zeros(2, 4), object_logits))
    assert (gated[0, 3] == NO_OBJECT_LOGIT).all() and (gated[1, 1] == NO_OBJECT_LOGIT).all()
    assert (gated[0, :3] == 5.0).all() and (gated[1, [0, 2, 3]] == 5.0).all()
    generator = SceneGraphGenerator(model)
    ctx = generator.encode_video(make_sample(0).video)
    hidden = torch.randn(3, model.hidden_size)
    with torch.inference_mode():  # the generator's outputs are inference tensors
        decoded = model.mask_decoder.decode(ctx.dense, model.obj_proj(hidden))
    logits, _ = generator.decode_masks(ctx, hidden)
    absent = decoded.object_logits < 0  # [3, T]
    assert torch.equal(logits[absent], torch.full_like(logits[absent], NO_OBJECT_LOGIT))
    torch.testing.assert_close(logits[~absent], decoded.mask_logits[~absent])
    # without the head nothing is gated
    plain = PSG4DModel.from_config(tiny_config())
    assert not plain.mask_decoder.has_presence_head and "loss_presence" not in plain(**plain.collate([make_sample(0)]))
