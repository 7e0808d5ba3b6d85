"""The 2D-to-4D visual scene transfer: the estimators (F_de, F_rte, F_dte), the pseudo-4D path,
lifted 2D samples in the collator, each stage kind's objective, the five-stage pipeline and
``psg4d predict`` with estimated depth."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file
from test_model_psg4d import PREDS, make_sample, tiny_config

from psg4d.data.schema import Relation, Sample, SceneGraph4D
from psg4d.errors import CheckpointError, ConfigError
from psg4d.model.estimators import (
    DepthEstimator,
    EstimatorConfig,
    TemporalEstimator,
    TransferConfig,
)
from psg4d.model.grammar import parse_scene_graph
from psg4d.model.psg4d_llm import PSG4DModel
from psg4d.engine import checkpoint as ckpt
from psg4d.train.stages import PRESET_DIR
from psg4d.train.stages import load_experiment

D = 32  # estimator width in the unit tests
EST = EstimatorConfig(depth_layers=1, temporal_layers=2, heads=4, mlp_ratio=2.0)


def _transfer_model(**transfer) -> PSG4DModel:
    """The tests' tiny model with the transfer's ``transfer`` settings (estimators built unless
    ``estimators=False``)."""
    cfg = tiny_config()
    cfg = dataclasses.replace(cfg, transfer=dataclasses.replace(cfg.transfer, **{"estimators": True, **transfer}))
    torch.manual_seed(0)
    return PSG4DModel.from_config(cfg)


def _lifted(sample: Sample) -> Sample:
    return Sample(video=sample.video, graph=sample.graph, lifted=True)


def _randomise_head(est: TemporalEstimator) -> None:
    """Move a fresh estimator off its "nothing moves" start, so its outputs depend on its input."""
    torch.manual_seed(1)
    torch.nn.init.normal_(est.head[1].weight, std=0.2)
    torch.nn.init.normal_(est.head[1].bias, std=0.2)


# --------------------------------------------------------------------------- 1-2: the estimators


def test_depth_estimator_maps_each_frame_on_its_own():
    torch.manual_seed(0)
    f_de = DepthEstimator(dim=D, cfg=EST).eval()
    x = torch.randn(2, 4, 6, D)
    with torch.no_grad():
        y = f_de(x)
        assert y.shape == x.shape
        x2 = x.clone()
        x2[:, 2] += torch.randn_like(x2[:, 2])
        y2 = f_de(x2)
    for t in range(4):
        if t == 2:
            assert not torch.allclose(y2[:, t], y[:, t], atol=1e-3)
        else:
            torch.testing.assert_close(y2[:, t], y[:, t], atol=1e-6, rtol=0)
    # per frame, not per clip: one frame alone gives the same features as inside the clip
    with torch.no_grad():
        torch.testing.assert_close(f_de(x[:, 1:2]), y[:, 1:2], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("j", [1, 2, 3])
def test_temporal_estimator_is_causal(j):
    torch.manual_seed(0)
    f_te = TemporalEstimator(dim=D, cfg=EST).eval()
    _randomise_head(f_te)
    x = torch.randn(2, 5, 6, D)
    x2 = x.clone()
    x2[:, j] += torch.randn_like(x2[:, j])
    with torch.no_grad():
        y, y2 = f_te(x), f_te(x2)
    assert y.shape == x.shape
    torch.testing.assert_close(y2[:, :j], y[:, :j], atol=1e-5, rtol=0)  # the past never sees frame j
    assert not torch.allclose(y2[:, j], y[:, j], atol=1e-3)
    if j + 1 < x.shape[1]:
        assert not torch.allclose(y2[:, j + 1], y[:, j + 1], atol=1e-3)  # the future does


def test_rollout_grows_a_clip_from_its_first_frame():
    torch.manual_seed(0)
    fresh = TemporalEstimator(dim=D, cfg=EST).eval()
    start = torch.randn(2, 1, 6, D)
    with torch.no_grad():
        clip = fresh.rollout(start, 5)
    assert clip.shape == (2, 5, 6, D)
    # zero-initialised head: "nothing moves", every frame is the first one exactly
    assert torch.equal(clip, start.expand(-1, 5, -1, -1))

    _randomise_head(fresh)
    with torch.no_grad():
        clip = fresh.rollout(start, 5)
        assert torch.equal(clip[:, :1], start)
        assert not torch.allclose(clip[:, 1], start[:, 0], atol=1e-3)
        # each step is the estimator's prediction from all the frames before it
        for t in range(1, 5):
            torch.testing.assert_close(clip[:, t], fresh(clip[:, :t])[:, -1], atol=1e-5, rtol=1e-5)
        assert fresh.rollout(start, 1).shape == (2, 1, 6, D)
        assert torch.equal(fresh.rollout(clip[:, :3], 3), clip[:, :3])  # known frames are kept


# --------------------------------------------------------------------------- 3-4: the model's features


def test_pseudo_clips_give_the_projector_tokens_of_real_clips():
    model = _transfer_model().eval()
    rgb = torch.rand(2, 4, 3, 32, 32)
    with torch.no_grad():
        _, real, _ = model.encode(rgb, None)
        enc, visual, _ = model.encode(rgb, None, lifted=torch.tensor([True, False]))
        assert visual.shape == real.shape and visual.shape[-1] == model.hidden_size
        assert enc.dense.shape[:2] == (2, 4)
        assert torch.isfinite(visual).all()
        # the lifted clip is imagined from its first frame: its later frames are never read
        rgb2 = rgb.clone()
        rgb2[:, 1:] = torch.rand_like(rgb2[:, 1:])
        _, visual2, _ = model.encode(rgb2, None, lifted=torch.tensor([True, False]))
    torch.testing.assert_close(visual2[0], visual[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(visual2[1], visual[1], atol=1e-4)

    plain = _transfer_model(estimators=False).eval()
    assert plain.estimators is None
    with pytest.raises(ConfigError, match="estimators"):
        plain.encode(rgb, None, lifted=torch.tensor([True, False]))
    with torch.no_grad():  # nothing lifted: fine without estimators
        plain.encode(rgb, None, lifted=torch.tensor([False, False]))


def test_depth_source_estimated_none_or_sensor():
    rgb, depth = torch.rand(1, 4, 3, 32, 32), torch.rand(1, 4, 1, 32, 32) * 3 + 0.5
    model = _transfer_model().eval()
    with torch.no_grad():
        feats, enc, _, _ = model.encode_scene(rgb, None)
        assert feats.depth_source == "estimated"
        assert feats.depth is not None and feats.real.depth is None
        # F_de of the RGB branch's features, frame by frame
        torch.testing.assert_close(feats.depth, model.estimators.depth(feats.real.rgb))
        assert enc.depth_feats is not None

        feats, _, _, _ = model.encode_scene(rgb, depth)
        assert feats.depth_source == "sensor"
        assert feats.real.depth is not None and torch.equal(feats.depth, feats.real.depth)

    plain = _transfer_model(estimators=False).eval()
    with torch.no_grad():
        feats, enc, _, _ = plain.encode_scene(rgb, None)
        assert feats.depth_source == "none" and feats.depth is None and enc.depth_feats is None
        assert plain.encode_scene(rgb, depth)[0].depth_source == "sensor"


# --------------------------------------------------------------------------- 5: the collator


def _triplets(model: PSG4DModel, batch: dict, b: int) -> list[tuple[str, str, str, int, int]]:
    ids = batch["target_ids"][b][batch["target_mask"][b].bool()].tolist()
    text = model.prompt.tokenizer.decode(ids, skip_special_tokens=False).replace("</s>", " ")
    res = parse_scene_graph(text, predicates=PREDS)
    return sorted((t.subject, t.predicate, t.object, t.start, t.end) for t in res.triplets)


def test_collator_lifts_an_image_beside_a_video():
    model = _transfer_model()
    image = make_sample(0, frames=1)
    assert image.video.depth is not None
    image = _lifted(Sample(video=dataclasses.replace(image.video, depth=None), graph=image.graph))
    video = make_sample(1, frames=4)
    batch = model.collate([image, video])
    t = model.config.max_frames
    assert batch["rgb"].shape[:2] == (2, t)
    assert batch["lifted"].tolist() == [True, False]
    assert batch["depth"] is not None and batch["depth"].shape[:2] == (2, t)
    assert torch.count_nonzero(batch["depth"][0]) == 0 and torch.count_nonzero(batch["depth"][1]) > 0
    assert all(torch.equal(batch["rgb"][0, k], batch["rgb"][0, 0]) for k in range(t))
    trip = _triplets(model, batch, 0)
    assert len(trip) == len(image.graph.relations) == 3
    assert all((s, e) == (0, t - 1) for *_, s, e in trip)
    # each [Obj] occurrence supervises the image's mask on every frame
    objs = image.graph.object_by_id()
    masks = batch["mask_targets"][0]
    assert masks.shape == (len(batch["obj_ids"][0]), t, 32, 32)
    for k, oid in enumerate(batch["obj_ids"][0]):
        frame0 = torch.from_numpy(objs[oid].tube.frame(0))
        for f in range(t):
            assert torch.equal(masks[k, f], frame0)
    # the video is untouched: its own spans and per-frame masks
    assert {(p, s, e) for _, p, _, s, e in _triplets(model, batch, 1)} == {
        ("picking up", 0, 1), ("holding", 1, 3), ("next to", 0, 0), ("next to", 2, 3)}


def test_collator_lifted_clip_length_and_relations_at_frame_zero():
    model = _transfer_model(pseudo_frames=3)
    multi = _lifted(make_sample(2, frames=4))  # a "2D" sample with 4 frames: only frame 0 counts
    batch = model.collate([multi])
    assert batch["rgb"].shape[1] == 3 and batch["depth"] is None and batch["lifted"].tolist() == [True]
    assert batch["frame_indices"][0].tolist() == [0, 0, 0]
    # "holding" spans frames 1-3 only: it does not hold in the image and is dropped
    assert _triplets(model, batch, 0) == [
        ("cup", "next to", "water dispenser", 0, 2),
        ("person", "picking up", "water dispenser", 0, 2),
    ]
    # the person leaves on the last frame, but the lifted clip shows frame 0 throughout
    person = [k for k, oid in enumerate(batch["obj_ids"][0]) if oid == 0]
    assert person and all(batch["mask_targets"][0][k].flatten(1).any(1).all() for k in person)
    # beside a longer real video, the clip follows the video's length (at most max_frames)
    batch = model.collate([multi, make_sample(1, frames=4)])
    assert batch["rgb"].shape[1] == 4 and batch["depth"] is not None

    # a relation that holds at frame 0 among others keeps one whole-clip span
    g = multi.graph
    g2 = SceneGraph4D(g.video_id, g.num_frames, g.height, g.width, g.objects,
                      [Relation(0, 1, "touching", [(0, 0), (2, 3)]), Relation(1, 2, "on", [(3, 3)])],
                      object_vocab=g.object_vocab, predicate_vocab=g.predicate_vocab)
    batch = model.collate([Sample(multi.video, g2, lifted=True)])
    assert _triplets(model, batch, 0) == [("person", "touching", "water dispenser", 0, 2)]


# --------------------------------------------------------------------------- 6: each stage's objective


def _fit(model: PSG4DModel, batch: dict, steps: int, trainable: tuple[str, ...], lr: float = 3e-3) -> list[dict]:
    """AdamW steps on one batch, only parameters under ``trainable`` prefixes train. One thread:
    the tiny model gains nothing from more, and a busy machine slows a 2-thread run a lot."""
    torch.manual_seed(0)
    params = []
    for name, p in model.named_parameters():
        p.requires_grad_(name.split(".")[0] in trainable)
        if p.requires_grad:
            params.append(p)
    opt = torch.optim.AdamW(params, lr=lr)
    model.train()
    history = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(steps):
            out = model(**batch)
            opt.zero_grad()
            out["loss"].backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            history.append({k: float(v.detach()) for k, v in out.items()})
    finally:
        torch.set_num_threads(threads)
    model.eval()
    return history


def _mean(history: list[dict], key: str, sl: slice) -> float:
    return float(np.mean([h[key] for h in history[sl]]))


def test_estimator_objective_fits_the_estimators_without_the_llm(monkeypatch):
    model = _transfer_model(objective="estimators")
    batch = model.collate([make_sample(0), make_sample(1), _lifted(make_sample(2, frames=1))])

    def no_llm(*a, **k):
        raise AssertionError("the estimator objective must not run the LLM")

    monkeypatch.setattr(model.llm, "forward", no_llm)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    history = _fit(model, batch, 20, trainable=("estimators",))
    assert {"loss", "loss_de_mse", "loss_rte_mse", "loss_dte_mse", "loss_consistency"} <= set(history[0])
    assert "loss_text" not in history[0]
    assert history[-1]["loss"] < 0.7 * history[0]["loss"], [round(h["loss"], 4) for h in history]
    after = model.state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"estimators"}


def test_pseudo4d_objective_lowers_llm_and_feature_losses():
    model = _transfer_model(objective="llm+estimators", pathway="pseudo")
    batch = model.collate([make_sample(0), make_sample(1)])
    model.train()
    feats = model.encode_scene(batch["rgb"], batch["depth"])[0]
    assert feats.pseudo.tolist() == [True, True]  # training rolls every clip out from its first frame
    history = _fit(model, batch, 15, trainable=("estimators", "projector", "obj_proj", "mask_decoder"))
    assert {"loss_text", "loss_pseudo_rgb_mse", "loss_pseudo_depth_mse"} <= set(history[0])
    assert _mean(history, "loss", slice(-3, None)) < 0.85 * _mean(history, "loss", slice(0, 3)), [
        round(h["loss"], 3) for h in history]
    assert history[-1]["loss_pseudo_depth_mse"] < history[0]["loss_pseudo_depth_mse"]
    # evaluation reads the real clips
    model.eval()
    assert model.encode_scene(batch["rgb"], batch["depth"])[0].pseudo.tolist() == [False, False]


def test_llm_objective_trains_on_lifted_images():
    model = _transfer_model()  # transfer_2d: objective llm, pathway real
    batch = model.collate([_lifted(make_sample(3, frames=1)), make_sample(1)])
    history = _fit(model, batch, 15, trainable=("projector", "llm", "obj_proj", "mask_decoder"))
    assert "loss_pseudo_rgb_mse" not in history[0]
    assert _mean(history, "loss", slice(-3, None)) < 0.7 * _mean(history, "loss", slice(0, 3)), [
        round(h["loss"], 3) for h in history]


# --------------------------------------------------------------------------- 7-9: stages, pipeline, predict

STAGES = ["4d_init", "estimator_fit", "pseudo4d_init", "transfer_2d", "finetune_4d"]


def _pipeline_yaml(root: Path, world: Path, out: Path, *, stages: list[dict] | None = None) -> Path:
    cfg = {
        "_base_": str(PRESET_DIR / "hoi_tiny.yaml"),
        "model": {"preset": "tiny", "max_frames": 4},
        "data": {"root": str(world), "train": [{"path": "4d", "split": "train"}],
                 "val": [{"path": "4d", "split": "val"}]},
        # R@K on an untrained model only costs time here; the session's thread count is left alone
        "train": {"val_max_videos": 1, "val_recall": False, "save_every": 0, "log_every": 1, "progress": False,
                  "num_threads": None},
        "stages": stages if stages is not None else [
            {"name": "4d_init", "kind": "4d_init",
             "trainable": ["encoder", "projector", "llm", "obj_proj", "mask_decoder"], "max_steps": 4},
            {"name": "estimator_fit", "kind": "estimator_fit", "init": "previous", "max_steps": 4},
            {"name": "pseudo4d_init", "kind": "pseudo4d_init", "init": "previous", "max_steps": 4},
            {"name": "transfer_2d", "kind": "transfer_2d", "init": "previous", "max_steps": 4,
             "data": [{"path": "2d", "split": "train", "lift_2d": True}]},
            {"name": "finetune_4d", "kind": "finetune_4d", "init": "previous", "max_steps": 4},
        ],
        "output_dir": str(out),
    }
    path = root / "pipe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from psg4d.data.synth import SynthConfig, generate

    root = tmp_path_factory.mktemp("transfer_world")
    generate(SynthConfig(videos=12, images=16, frames=8, size=32, workers=1, shadows=False), root, progress=False)
    return root


@pytest.fixture(scope="module")
def pipeline(world, tmp_path_factory):
    from psg4d.train.loop import train

    root = tmp_path_factory.mktemp("transfer_run")
    cfg = load_experiment(_pipeline_yaml(root, world, root / "run"))
    result = train(cfg)  # a ConfigError here: the frozen-parameter check refused a stage
    return cfg, result, root / "run"


def _weights(run: Path, stage: str) -> dict[str, torch.Tensor]:
    return load_file(str(run / stage / ckpt.FINAL / ckpt.MODEL_WEIGHTS))


def _part(weights: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    part = {k: v for k, v in weights.items() if k.startswith(prefix + ".")}
    assert part, f"no {prefix}.* tensors"
    return part


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_pipeline_chains_the_five_stages(pipeline):
    cfg, result, run = pipeline
    assert [s.name for s in result.stages] == STAGES and not any(s.skipped for s in result.stages)
    assert all(s.steps == 4 and np.isfinite(s.final_loss) for s in result.stages)
    w = {s: _weights(run, s) for s in STAGES}
    assert not any(k.startswith("estimators.") for k in w["4d_init"])
    # estimator_fit: the 4D-LLM stays as 4d_init left it; only the new estimators learn
    for frozen in ("llm", "encoder", "projector", "mask_decoder"):
        assert _same(_part(w["estimator_fit"], frozen), _part(w["4d_init"], frozen)), frozen
    # the temporal heads start at zero ("nothing moves"): fitted, they are not
    for est in ("rgb_temporal", "depth_temporal"):
        assert torch.count_nonzero(w["estimator_fit"][f"estimators.{est}.head.1.weight"]) > 0
    fresh = PSG4DModel.from_config(cfg.model_config_for(cfg.stages[1])).state_dict()
    assert not _same(_part(w["estimator_fit"], "estimators"), {k: v for k, v in fresh.items()
                                                                if k.startswith("estimators.")})
    # pseudo4d_init starts from estimator_fit: the LLM (frozen) is carried, the estimators move on
    assert _same(_part(w["pseudo4d_init"], "llm"), _part(w["4d_init"], "llm"))
    assert not _same(_part(w["pseudo4d_init"], "estimators"), _part(w["estimator_fit"], "estimators"))
    # transfer_2d trains the projector and LLM on lifted images, the estimators stay
    assert not _same(_part(w["transfer_2d"], "projector"), _part(w["pseudo4d_init"], "projector"))
    assert not _same(_part(w["transfer_2d"], "llm"), _part(w["pseudo4d_init"], "llm"))
    assert _same(_part(w["transfer_2d"], "estimators"), _part(w["pseudo4d_init"], "estimators"))
    assert _same(_part(w["finetune_4d"], "estimators"), _part(w["transfer_2d"], "estimators"))
    assert not _same(_part(w["finetune_4d"], "projector"), _part(w["transfer_2d"], "projector"))
    # the experiment's final is the last stage's, and it loads with its estimators
    assert (run / ckpt.FINAL).resolve() == (run / "finetune_4d" / ckpt.FINAL).resolve()
    model = PSG4DModel.from_pretrained(run / ckpt.FINAL)
    assert model.estimators is not None and model.config.transfer.estimators
    assert _same({k: v for k, v in model.state_dict().items() if k.startswith("estimators.")},
                 _part(w["finetune_4d"], "estimators"))


def test_only_stage_needs_the_previous_stage_and_skips_a_finished_one(pipeline, tmp_path):
    from psg4d.train.loop import train

    cfg, _, run = pipeline
    with pytest.raises(CheckpointError, match=r"'pseudo4d_init'.*run it first"):
        train(cfg, out_dir=tmp_path / "fresh", only_stage="transfer_2d")
    with pytest.raises(ConfigError, match="no_such_stage"):
        train(cfg, out_dir=tmp_path / "fresh", only_stage="no_such_stage")
    stamp = (run / "transfer_2d" / ckpt.FINAL / ckpt.MODEL_WEIGHTS).stat().st_mtime_ns
    again = train(cfg, out_dir=run, only_stage="transfer_2d")
    assert [(s.name, s.skipped) for s in again.stages] == [("transfer_2d", True)]
    assert (run / "transfer_2d" / ckpt.FINAL / ckpt.MODEL_WEIGHTS).stat().st_mtime_ns == stamp

    # with the stages before it finished, one stage runs alone from the previous stage's final
    part = tmp_path / "part"
    for name in STAGES[:3]:
        shutil.copytree(run / name, part / name, symlinks=True)
    alone = train(cfg, out_dir=part, only_stage="transfer_2d")
    assert [(s.name, s.skipped, s.steps) for s in alone.stages] == [("transfer_2d", False, 4)]
    w = _weights(part, "transfer_2d")
    assert _same(_part(w, "estimators"), _part(_weights(run, "pseudo4d_init"), "estimators"))
    assert not (part / "finetune_4d").exists() and not (part / ckpt.FINAL).exists()


def test_predict_estimates_depth_with_the_transfer_checkpoint(pipeline, world, tmp_path):
    from psg4d.cli import main
    from psg4d.data.readers import open_dataset

    _, _, run = pipeline
    reader = open_dataset(world / "4d")
    split = next(s for s in reader.splits if reader.video_ids(s))
    video = reader.read_video(reader.video_ids(split)[0])
    frames = tmp_path / "rgb"
    frames.mkdir()
    for t in range(4):
        Image.fromarray(video.rgb[t]).save(frames / f"frame_{t}.png")
    sources = {}
    for name, ck in (("transfer", run / ckpt.FINAL), ("4d_only", run / "4d_init" / ckpt.FINAL)):
        out = tmp_path / f"{name}.json"
        assert main(["predict", "--ckpt", str(ck), "--rgb", str(frames), "--max-new-tokens", "12",
                     "--candidates", "20", "--out", str(out)]) == 0
        sources[name] = SceneGraph4D.load(out).meta["depth_source"]
    assert sources == {"transfer": "estimated", "4d_only": "none"}


def test_a_lift_2d_source_yields_lifted_samples(world):
    from psg4d.train.data import build_mixture
    from psg4d.train.stages import DataConfig, DataSourceConfig

    mix = build_mixture([DataSourceConfig(path="2d", split="train", lift_2d=True),
                         DataSourceConfig(path="4d", split="train")], DataConfig(root=str(world)))
    images, videos = mix.datasets
    assert len(images) and len(videos)
    image, video = images[0], videos[0]
    assert image.lifted and image.video.num_frames == 1 and not video.lifted
    cfg = dataclasses.replace(
        tiny_config(), transfer=TransferConfig(estimators=True),
        object_vocab=sorted({o.category for s in (image, video) for o in s.graph.objects}),
        predicate_vocab=sorted({r.predicate for s in (image, video) for r in s.graph.relations}))
    batch = PSG4DModel.from_config(cfg).collate([image, video])
    assert batch["lifted"].tolist() == [True, False] and batch["rgb"].shape[1] == cfg.max_frames


def test_stage_kinds_lifting_and_model_settings(tmp_path):
    lifted_4d = [{"name": "s", "kind": "4d_init", "max_steps": 1,
                  "data": [{"path": "2d", "split": "train", "lift_2d": True}]}]
    with pytest.raises(ConfigError, match=r"lift_2d.*transfer_2d"):
        load_experiment(_pipeline_yaml(tmp_path, tmp_path, tmp_path / "run", stages=lifted_4d))

    cfg = load_experiment(_pipeline_yaml(tmp_path, tmp_path, tmp_path / "run"))
    assert [s.kind for s in cfg.stages] == STAGES
    by_kind = {s.kind: cfg.model_config_for(s).transfer for s in cfg.stages}
    assert by_kind["4d_init"] == TransferConfig()
    assert not by_kind["4d_init"].estimators
    assert (by_kind["estimator_fit"].estimators, by_kind["estimator_fit"].objective) == (True, "estimators")
    assert (by_kind["pseudo4d_init"].objective, by_kind["pseudo4d_init"].pathway) == ("llm+estimators", "pseudo")
    for kind in ("transfer_2d", "finetune_4d"):
        assert (by_kind[kind].estimators, by_kind[kind].objective, by_kind[kind].pathway) == (True, "llm", "real")
    assert cfg.model.transfer == TransferConfig()  # the experiment's own model config is left alone
    # the objective needs the estimators
    with pytest.raises(ConfigError, match="estimators"):
        TransferConfig(objective="estimators")
