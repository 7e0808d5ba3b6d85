import numpy as np

from psg4d.data.schema import MaskTube, ObjectTrack, Relation, SceneGraph4D
from psg4d.infer.baselines import FrequencyBaseline


def _g(vid, rels):
    cats = {}
    objs = []
    for s, _, o in rels:
        for c in (s, o):
            if c not in cats:
                cats[c] = len(cats)
                objs.append(ObjectTrack(object_id=cats[c], category=c, tube=MaskTube.empty(4, 3, 3)))
    return SceneGraph4D(
        video_id=vid, num_frames=4, height=3, width=3, objects=objs,
        relations=[Relation(cats[s], cats[o], p, [(0, 1)]) for s, p, o in rels],
    )


def test_frequency_ranking_and_whole_frame_tubes():
    train = [
        _g("a", [("hand", "holding", "mug"), ("mug", "on", "table")]),
        _g("b", [("hand", "holding", "mug"), ("box", "on", "table")]),
    ]
    base = FrequencyBaseline(top_k=2).fit(train)
    pred = base.predict(video_id="x", num_frames=6, height=5, width=4).validate()
    ranked = pred.ranked()
    cats = {o.object_id: o.category for o in pred.objects}
    assert [(cats[r.subject_id], r.predicate, cats[r.object_id]) for r in ranked] == [
        ("hand", "holding", "mug"),
        ("box", "on", "table"),  # tie with (mug, on, table), broken alphabetically
    ]
    assert ranked[0].score == 2 / 3 and ranked[0].spans == [(0, 5)]
    assert all(o.tube.to_dense().all() for o in pred.objects)
    assert np.all(pred.objects[0].tube.areas() == 20)
