"""The shipped experiment presets and the ``psg4d train`` command."""

from __future__ import annotations

import json

import pytest

from psg4d.cli import main
from psg4d.errors import ConfigError
from psg4d.train.commands import resolve_config
from psg4d.train.stages import PRESET_DIR
from psg4d.train.stages import ExperimentConfig, check_local_weights, load_experiment

PRESETS = {"hoi_tiny": "tiny", "hoi_tiny_sam2": "tiny-sam2", "hoi_lite0": "tiny", "hoi_smollm2": "smollm2-135m", "hoi_full": "full", "gta_full": "full",
           "hoi_full_transfer": "full",
           "hoi_transfer": "tiny", "hoi_chain": "tiny"}
TRANSFER_STAGES = ["4d_init", "estimator_fit", "pseudo4d_init", "transfer_2d", "finetune_4d"]


PIPELINE_PRESETS = {"pipeline_hoi_tiny"}  # `kind: pipeline`: tests/test_baseline_pipeline.py


def test_shipped_presets_are_the_expected_set():
    assert sorted(p.stem for p in PRESET_DIR.glob("*.yaml")) == sorted([*PRESETS, *PIPELINE_PRESETS])


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_loads_into_an_experiment(name):
    cfg = load_experiment(resolve_config(name))
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.model.preset == PRESETS[name]
    kinds = {"hoi_transfer": TRANSFER_STAGES, "hoi_chain": TRANSFER_STAGES, "hoi_full_transfer": TRANSFER_STAGES,
             "hoi_tiny_sam2": ["sam2_pretrain", "4d_init"]}
    assert [s.kind for s in cfg.stages] == kinds.get(name, ["4d_init"])
    # only the chain preset writes samples as the chained steps
    assert (cfg.model.chain_prob > 0) == (name == "hoi_chain")
    assert cfg.data.train and cfg.data.val
    if name in ("hoi_transfer", "hoi_full_transfer"):
        # each stage from the previous one's weights; 2D images lifted in transfer_2d, replayed in finetune_4d
        assert [s.init for s in cfg.stages] == [None] + ["previous"] * 4
        lifted = {s.name: [d.path for d in cfg.stage_data(s) if d.lift_2d] for s in cfg.stages}
        two_d = "psg" if name == "hoi_full_transfer" else "2d"
        assert lifted == {"4d_init": [], "estimator_fit": [], "pseudo4d_init": [], "transfer_2d": [two_d],
                          "finetune_4d": [two_d]}
    if name == "hoi_tiny_sam2":
        # SAM2 as SAM2 on every frame, pretrained on every object's masks before the 4D-LLM stage starts from it
        assert cfg.model.mask_decoder.kind == "sam2" and cfg.model.max_frames == 16
        assert cfg.model.supervise_all_objects and [s.init for s in cfg.stages] == [None, "previous"]
    if name.endswith(("_full", "_full_transfer")):
        assert cfg.model.mask_decoder.kind == "sam2" and cfg.model.mask_decoder.sam2.frozen == ["image_encoder.trunk"]
        assert cfg.model.mask_decoder.weights_path.endswith("sam2.1_hiera_large.pt")
    if name == "hoi_tiny":
        assert cfg.train.device == "cpu" and cfg.train.num_threads == 2 and cfg.data.root == "runs/synth_hoi_big"
    if name == "hoi_lite0":
        # pretrained backbones stay frozen; their fusion and merging train
        assert cfg.model.encoder.backbone == "efficientnet_lite0" and cfg.model.encoder.pretrained
        prefixes = cfg.stages[0].trainable_prefixes()
        assert "encoder" not in prefixes and {"encoder.fusion", "encoder.merger"} <= set(prefixes)
        # the branches' LayerNorm + Linear heads start random on top of the pretrained backbones
        assert {f"encoder.{b}_branch.{h}" for b in ("rgb", "depth") for h in ("norm", "proj")} <= set(prefixes)
        assert cfg.model.tag_words and cfg.model.tag_tokens == 0 and cfg.model.input_token_dropout > 0
    if name.endswith(("_full", "_full_transfer")):
        # the preset's model settings are the named preset's (paper sizes), with local paths on top
        assert cfg.model.encoder.backbone == "imagebind" and cfg.model.llm.freeze_llm
        # ImageBind fills both branches (trunks and heads); the fusion gates and token merger start random
        prefixes = cfg.stages[0].trainable_prefixes()
        assert "encoder" not in prefixes and {"encoder.fusion", "encoder.merger"} <= set(prefixes)


@pytest.mark.parametrize(
    ("name", "pretrained"),
    [("hoi_tiny", []), ("hoi_lite0", ["encoder.depth_branch.backbone", "encoder.rgb_branch.backbone"])],
)
def test_preset_stage_freezes_only_parameters_that_hold_weights(name, pretrained):
    """The loop's frozen-parameter check passes on the model the preset builds."""
    import dataclasses

    from psg4d.model.psg4d_llm import PSG4DModel
    from psg4d.train.params import check_frozen_initialised, set_trainable, top_level_modules

    cfg = load_experiment(resolve_config(name))
    model = PSG4DModel.from_config(dataclasses.replace(cfg.model, object_vocab=["cup", "person"], predicate_vocab=["on"]))
    stage = cfg.stages[0]
    set_trainable(model, stage.trainable_prefixes(top_level_modules(model)))
    assert check_frozen_initialised(model, stage_name=stage.name, init_names=()).pretrained == pretrained


@pytest.mark.parametrize("name", ["hoi_full", "gta_full", "hoi_full_transfer"])
def test_full_presets_name_the_missing_local_weights(name, tmp_path):
    cfg = load_experiment(resolve_config(name))
    # resolved as the model resolves it: under $PSG4D_WEIGHTS or the current directory, shown absolute
    with pytest.raises(ConfigError, match=r"model\.encoder\.weights_path: /\S*/checkpoints/imagebind_huge\.pth not found"):
        check_local_weights(cfg.model)
    weights = tmp_path / "ib.pth"
    weights.write_bytes(b"")
    sam = tmp_path / "sam.pt"
    sam.write_bytes(b"")
    cfg = load_experiment(
        resolve_config(name), [f"model.encoder.weights_path={weights}", f"model.mask_decoder.weights_path={sam}"]
    )
    with pytest.raises(ConfigError, match=r"model\.llm\.name: /\S*/checkpoints/llama-2-7b-hf not found.*--set model\.llm\.name="):
        check_local_weights(cfg.model)


def test_repo_root_configs_folder_is_the_shipped_presets():
    root_configs = PRESET_DIR.parent.parent.parent / "configs"
    assert (root_configs / "hoi_tiny.yaml").resolve() == (PRESET_DIR / "hoi_tiny.yaml").resolve()


def test_cli_reports_missing_weights_as_an_error_line(capsys):
    assert main(["train", "--config", "hoi_full"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model.encoder.weights_path") and "Traceback" not in err


def test_cli_unknown_config_lists_presets(capsys):
    assert main(["train", "--config", "nope.yaml"]) == 2
    assert ("shipped presets: ['gta_full', 'hoi_chain', 'hoi_full', 'hoi_full_transfer', 'hoi_lite0', 'hoi_smollm2', 'hoi_tiny', 'hoi_tiny_sam2',"
            " 'hoi_transfer',"
            " 'pipeline_hoi_tiny']"
            in capsys.readouterr().err)


def test_cli_missing_synthetic_world_says_how_to_make_it(tmp_path, capsys):
    assert main(["train", "--config", "hoi_tiny", "--set", f"data.root={tmp_path / 'none'}"]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "psg4d synth --preset hoi" in err


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    from psg4d.data.synth.generate import SynthConfig, generate

    root = tmp_path_factory.mktemp("synth_hoi")
    generate(SynthConfig(preset="hoi", videos=6, images=0, frames=4, size=32, workers=1), root, progress=False)
    return root


def _tiny_cli(world, out, steps):
    return main([
        "train", "--config", str(PRESET_DIR / "hoi_tiny.yaml"),
        "--set", f"data.root={world}",
        "--set", f"stages=[{{name: 4d_init, trainable: [encoder, projector, llm, obj_proj, mask_decoder], max_steps: {steps}}}]",
        "--set", "model.image_size=32", "--set", "model.max_frames=4",
        "--set", "train.val_recall=false", "--set", "train.val_max_videos=1", "--set", "train.batch_size=1",
        "--out", str(out),
    ])


def test_tiny_preset_trains_one_step_of_the_real_model_through_the_cli(tiny_world, tmp_path, capsys, caplog):
    out = tmp_path / "run"
    code = _tiny_cli(tiny_world, out, 1)
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "stage 4d_init: 1 steps" in printed and f"final model: {out / '4d_init' / 'final'}" in printed
    from psg4d.model.psg4d_llm import PSG4DModel
    from psg4d.engine.metrics import read_metrics

    recs = read_metrics(out / "4d_init" / "metrics.jsonl")
    assert recs[0]["step"] == 1 and recs[0]["loss"] > 0 and "loss_text" in recs[0] and "loss_mask" in recs[0]
    assert recs[-1]["val"]["val_loss"] > 0
    model = PSG4DModel.from_pretrained(out / "final")
    # the vocabularies came from the synthetic world's reader
    assert model.config.predicate_vocab and model.config.object_vocab
    meta = json.loads((out / "4d_init" / "final" / "trainer.json").read_text())
    assert meta["complete"] and meta["step"] == 1

    # a longer schedule continues from the real model's checkpoint (weights + optimizer state)
    caplog.set_level("INFO", logger="psg4d.train")
    assert _tiny_cli(tiny_world, out, 2) == 0
    recs = read_metrics(out / "4d_init" / "metrics.jsonl")
    assert [r["step"] for r in recs if "loss" in r] == [1, 2]
    assert any("resuming from" in r.getMessage() and "at step 1 of 2" in r.getMessage() for r in caplog.records)


def test_sam2_preset_pretrains_then_trains_and_predicts_a_tube_on_every_frame(tiny_world, tmp_path, capsys):
    """hoi_tiny_sam2 through the CLI: sam2_pretrain, then 4d_init from its weights; prediction
    decodes every frame of the video through SAM2."""
    import torch

    from psg4d.data.readers import open_dataset
    from psg4d.infer.predictor import Predictor
    from psg4d.model.psg4d_llm import PSG4DModel
    from psg4d.engine.metrics import read_metrics

    out = tmp_path / "run"
    code = main([
        "train", "--config", str(PRESET_DIR / "hoi_tiny_sam2.yaml"), "--set", f"data.root={tiny_world}",
        "--set", "stages.0.max_steps=2", "--set", "stages.1.max_steps=1", "--set", "model.image_size=32",
        "--set", "train.val_recall=false", "--set", "train.val_max_videos=2", "--set", "train.batch_size=2",
        "--out", str(out),
    ])
    assert code == 0, capsys.readouterr().err
    pre = read_metrics(out / "sam2_pretrain" / "metrics.jsonl")
    assert [r["step"] for r in pre if "loss" in r] == [1, 2] and "loss_presence" in pre[0]
    assert set(pre[-1]["val"]) == {"val_loss"}  # no LLM to judge in this stage
    llm = read_metrics(out / "4d_init" / "metrics.jsonl")
    assert "loss_text" in llm[0] and "loss_presence" in llm[0]
    first = PSG4DModel.from_pretrained(out / "sam2_pretrain" / "final")
    model = PSG4DModel.from_pretrained(out / "final")
    assert model.sam2 and model.config.max_frames == 16
    assert not torch.equal(first.mask_decoder.sam.sam_mask_decoder.iou_token.weight,
                           torch.zeros_like(first.mask_decoder.sam.sam_mask_decoder.iou_token.weight))
    ds = open_dataset(tiny_world / "4d")
    video = ds.read_video(next(iter(ds.iter_graphs("test"))).video_id)
    graph = Predictor(model=model).predict(video)
    assert graph.objects and all(len(o.tube.rles) == video.num_frames for o in graph.objects if o.tube is not None)


def test_default_validation_reports_recall_of_predicted_scene_graphs(tiny_world, tmp_path):
    from psg4d.train.loop import train

    cfg = load_experiment(
        PRESET_DIR / "hoi_tiny.yaml",
        [
            f"data.root={tiny_world}",
            "stages=[{name: 4d_init, trainable: [encoder, projector, llm, obj_proj, mask_decoder], max_steps: 1}]",
            "model.image_size=32", "model.max_frames=4", "model.max_new_tokens=32",
            "train.val_recall=true", "train.val_max_videos=1", "train.batch_size=1",
        ],
    )
    res = train(cfg, out_dir=tmp_path / "run")
    val = res.stages[0].val
    assert val["val_loss"] > 0 and val["num_videos"] == 1
    assert {"R@20", "R@50", "R@100", "mR@20", "mR@50", "mR@100"} <= set(val)
    assert all(0.0 <= val[k] <= 100.0 for k in ("R@20", "mR@100"))
