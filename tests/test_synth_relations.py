"""Relation labels follow the simulated state and the rendered frames."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from psg4d.data.synth.generate import SynthConfig, simulate_video_with_state
from psg4d.data.synth.relations import THRESHOLDS, runs_to_spans
from psg4d.data.synth.script import heading_axes, part_tops
from psg4d.data.synth.world import PRESET_PREDICATES

N_VIDEOS = 36


@pytest.fixture(scope="module", params=["hoi", "gta"])
def videos(request):
    cfg = SynthConfig(preset=request.param, frames=16, size=64)
    return request.param, [simulate_video_with_state(cfg, "train", i) for i in range(N_VIDEOS)]


def _frames(rel) -> np.ndarray:
    return rel.frames()


def _rels(videos, predicate):
    _, items = videos
    for sample, scene in items:
        ents = scene.by_id()
        for r in sample.graph.relations:
            if r.predicate == predicate:
                yield sample, scene, ents, r


def test_every_predicate_occurs(videos):
    preset, items = videos
    seen = {r.predicate for s, _ in items for r in s.graph.relations}
    assert set(PRESET_PREDICATES[preset]) <= seen, set(PRESET_PREDICATES[preset]) - seen


def test_relations_reference_objects_and_valid_spans(videos):
    _, items = videos
    for s, _ in items:
        s.graph.validate(require_tubes=True)
        s.video.validate()
        for r in s.graph.relations:
            assert r.spans and all(b - a + 1 >= 2 for a, b in r.spans)
            assert r.spans == sorted(r.spans)


def test_carrying_object_moves_with_the_hand(videos):
    n = 0
    for s, scene, ents, r in _rels(videos, "carrying"):
        agent, obj = ents[r.subject_id], ents[r.object_id]
        for a, b in r.spans:
            off = obj.pos[a:b + 1] - agent.effector[a:b + 1]
            assert np.allclose(off, off[0], atol=1e-9)  # rigidly attached to the hand
            assert np.linalg.norm(obj.pos[b] - obj.pos[a]) > 0.01  # and moving
            assert (agent.grasp[a:b + 1] == obj.object_id).all()
            # the rendered mask moves too (centroid shift in pixels) when seen at both ends
            tube = next(o.tube for o in s.graph.objects if o.object_id == obj.object_id)
            ma, mb = tube.frame(a), tube.frame(b)
            if ma.sum() > 3 and mb.sum() > 3:
                ca = np.argwhere(ma).mean(0)
                cb = np.argwhere(mb).mean(0)
                assert np.linalg.norm(cb - ca) > 0.3
        n += 1
    assert n > 0


def test_in_front_of_agrees_with_the_depth_map(videos):
    n = 0
    for s, scene, ents, r in _rels(videos, "in front of"):
        tubes = {o.object_id: o.tube for o in s.graph.objects}
        for t in _frames(r):
            ms, mo = tubes[r.subject_id].frame(t), tubes[r.object_id].frame(t)
            assert ms.any() and mo.any()
            ds, do = np.median(s.video.depth[t][ms]), np.median(s.video.depth[t][mo])
            assert ds < do
            n += 1
    assert n > 0
    # behind is its mirror image
    for s, scene, ents, r in _rels(videos, "behind"):
        mirror = [q for q in s.graph.relations if q.predicate == "in front of" and
                  (q.subject_id, q.object_id) == (r.object_id, r.subject_id)]  # fmt: skip
        assert mirror and mirror[0].spans == r.spans


def _touching_top(scene, ents, subject, support_id, t, eps) -> bool:
    bottom = subject.pos[t, 2]
    sup = ents[support_id]
    if sup.name == "floor":
        return abs(bottom) < eps
    for top, c, half, flat in part_tops(sup):
        if flat and abs(bottom - top[t]) < eps and np.all(np.abs(subject.pos[t, :2] - c[t]) <= half[t] + 1e-6):
            return True
    return False


@pytest.mark.parametrize("predicate", ["on", "standing on", "sitting on"])
def test_support_predicates_mean_bottom_touches_top(videos, predicate):
    preset, _ = videos
    eps = THRESHOLDS[preset].contact
    for s, scene, ents, r in _rels(videos, predicate):
        subj = ents[r.subject_id]
        for t in _frames(r):
            assert _touching_top(scene, ents, subj, r.object_id, t, eps)
            if predicate != "on":
                assert subj.posture[t] == (1 if predicate == "sitting on" else 0)


def test_holding_is_grasp_and_lifting_predicates_follow_height(videos):
    for s, scene, ents, r in _rels(videos, "holding"):
        assert (ents[r.subject_id].grasp[_frames(r)] == r.object_id).all()
    for pred, sign in (("picking up", 1), ("putting down", -1)):
        for s, scene, ents, r in _rels(videos, pred):
            obj = ents[r.object_id]
            for a, b in r.spans:
                assert sign * (obj.pos[b, 2] - obj.pos[a, 2]) > 0
                assert (ents[r.subject_id].grasp[a:b + 1] == obj.object_id).all()


@pytest.mark.parametrize("predicate,sign", [("pushing", 1), ("pulling", -1)])
def test_push_pull_direction(videos, predicate, sign):
    for s, scene, ents, r in _rels(videos, predicate):
        agent, obj = ents[r.subject_id], ents[r.object_id]
        for a, b in r.spans:
            assert (agent.contact[a:b + 1] == obj.object_id).all()
            assert (agent.grasp[a:b + 1] != obj.object_id).all()
            move = obj.pos[b, :2] - obj.pos[a, :2]
            away = obj.pos[a, :2] - agent.base[a, :2]
            assert sign * float(move @ away) > 0
            assert abs(obj.pos[b, 2] - obj.pos[a, 2]) < 1e-9  # slides, never lifted


def test_reaching_and_walking_close_the_distance(videos):
    for s, scene, ents, r in _rels(videos, "reaching toward"):
        agent, obj = ents[r.subject_id], ents[r.object_id]
        top = obj.pos[:, :] + np.array([0, 0, obj.category.height])
        for a, b in r.spans:
            d = np.linalg.norm(top[a:b + 1] - agent.effector[a:b + 1], axis=-1)
            assert d[-1] < d[0]
            assert (agent.grasp[a:b + 1] < 0).all()
    for s, scene, ents, r in _rels(videos, "walking toward"):
        agent, obj = ents[r.subject_id], ents[r.object_id]
        for a, b in r.spans:
            d = np.linalg.norm(obj.pos[a:b + 1, :2] - agent.base[a:b + 1, :2], axis=-1)
            assert d[-1] < d[0]


def test_talking_people_stand_still_facing_each_other(videos):
    for s, scene, ents, r in _rels(videos, "talking to"):
        p, q = ents[r.subject_id], ents[r.object_id]
        assert p.name == q.name == "person"
        for t in _frames(r):
            d = q.base[t, :2] - p.base[t, :2]
            assert np.linalg.norm(d) < 2.0
            fwd, _ = heading_axes(p.heading[t])
            assert fwd @ d > 0
        assert any(x.predicate == "talking to" and x.subject_id == q.object_id for x in s.graph.relations)


def test_next_to_shares_support(videos):
    preset, _ = videos
    for s, scene, ents, r in _rels(videos, "next to"):
        a, b = ents[r.subject_id], ents[r.object_id]
        for t in _frames(r):
            assert a.pos[t, 2] == pytest.approx(b.pos[t, 2], abs=2 * THRESHOLDS[preset].contact)


@given(st.lists(st.booleans(), min_size=0, max_size=40), st.integers(1, 4))
@settings(max_examples=200, deadline=None)
def test_runs_to_spans(mask, min_span):
    m = np.array(mask, dtype=bool)
    spans = runs_to_spans(m, min_span)
    covered = np.zeros(len(m), dtype=bool)
    for a, b in spans:
        assert b - a + 1 >= min_span
        assert m[a:b + 1].all()
        assert (a == 0 or not m[a - 1]) and (b == len(m) - 1 or not m[b + 1])  # maximal runs
        covered[a:b + 1] = True
    # every dropped true frame belongs to a run shorter than min_span
    for t in np.nonzero(m & ~covered)[0]:
        a = t
        while a > 0 and m[a - 1]:
            a -= 1
        b = t
        while b < len(m) - 1 and m[b + 1]:
            b += 1
        assert b - a + 1 < min_span


def test_put_down_objects_rest_on_a_support(videos):
    """After a put-down ends (and the video goes on), the object rests on something."""
    n = 0
    for s, scene, ents, r in _rels(videos, "putting down"):
        end = r.spans[-1][1]
        if end + 3 >= s.graph.num_frames:
            continue
        on = [q for q in s.graph.relations if q.predicate == "on" and q.subject_id == r.object_id]
        assert any(a <= end + 2 and b >= end + 2 for q in on for a, b in q.spans), (r, on)
        n += 1
    assert n > 0
