"""Speed of ``psg4d.eval.evaluate`` on a synthetic split, both protocols.

100 videos of 64x64 pixels and 32 frames, ~6 objects (moving boxes) and ~8
relations each; predictions are jittered copies of the truth plus random
candidates, 100 ranked candidates per video. Graph generation is not timed.

    python bench/bench_eval.py [--videos 100] [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from psg4d.data.schema import MaskTube, ObjectTrack, Relation, SceneGraph4D
from psg4d.eval import evaluate

CATS = [f"cat{i}" for i in range(12)]
PREDS = [f"pred{i}" for i in range(10)]


def _boxes(rng: np.random.Generator, T: int, size: int) -> np.ndarray:
    m = np.zeros((T, size, size), dtype=bool)
    h, w = rng.integers(8, 24, 2)
    y, x = rng.integers(0, size - 8, 2)
    vy, vx = rng.integers(-1, 2, 2)
    for t in range(T):
        y = int(np.clip(y + vy + rng.integers(-1, 2), 0, size - 4))
        x = int(np.clip(x + vx + rng.integers(-1, 2), 0, size - 4))
        m[t, y : y + h, x : x + w] = True
    return m


def make_video(rng: np.random.Generator, vid: str, *, T: int = 32, size: int = 64, n_cand: int = 100):
    n_obj = int(rng.integers(5, 8))
    dense = [_boxes(rng, T, size) for _ in range(n_obj)]
    cats = [str(c) for c in rng.choice(CATS, n_obj)]
    gt_objs = [ObjectTrack(i, cats[i], tube=MaskTube.from_dense(dense[i])) for i in range(n_obj)]
    gt_rels = []
    for _ in range(int(rng.integers(6, 11))):
        s, o = (int(v) for v in rng.choice(n_obj, 2, replace=False))
        a = int(rng.integers(0, T - 4))
        gt_rels.append(Relation(s, o, str(rng.choice(PREDS)), [(a, int(rng.integers(a + 3, T)))]))
    gt = SceneGraph4D(vid, T, size, size, gt_objs, gt_rels, object_vocab=CATS, predicate_vocab=PREDS)

    pred_objs = []
    for i, m in enumerate(dense):
        shifted = np.roll(m, tuple(int(v) for v in rng.integers(-3, 4, 2)), axis=(1, 2))
        cat = cats[i] if rng.random() < 0.85 else str(rng.choice(CATS))
        pred_objs.append(ObjectTrack(i, cat, tube=MaskTube.from_dense(shifted)))
    for j in range(2):  # a couple of spurious objects
        pred_objs.append(ObjectTrack(n_obj + j, str(rng.choice(CATS)), tube=MaskTube.from_dense(_boxes(rng, T, size))))
    n_pred_obj = len(pred_objs)
    cands = []
    for r in gt_rels:
        (a, b), = r.spans
        span = (max(0, a - int(rng.integers(0, 4))), min(T - 1, b + int(rng.integers(0, 4))))
        cands.append(Relation(r.subject_id, r.object_id, r.predicate, [span], score=float(rng.random())))
    while len(cands) < n_cand:
        s, o = (int(v) for v in rng.choice(n_pred_obj, 2, replace=False))
        a = int(rng.integers(0, T))
        cands.append(Relation(s, o, str(rng.choice(PREDS)), [(a, int(rng.integers(a, T)))], score=float(rng.random())))
    pred = SceneGraph4D(vid, T, size, size, pred_objs, cands)
    return pred, gt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    pairs = [make_video(rng, f"v{i:04d}") for i in range(args.videos)]
    preds, gts = [p for p, _ in pairs], [g for _, g in pairs]
    report = {"videos": args.videos, "frames": 32, "size": 64, "candidates_per_video": 100, "protocols": {}}
    for protocol in ("pvsg", "volumetric"):
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            result = evaluate(preds, gts, protocol=protocol)
            times.append(time.perf_counter() - t0)
        best = min(times)
        report["protocols"][protocol] = {
            "seconds_best": round(best, 3),
            "seconds_median": round(float(np.median(times)), 3),
            "videos_per_s": round(args.videos / best, 1),
            "R@20": round(result["R@20"], 2),
            "R@100": round(result["R@100"], 2),
        }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{args.videos} videos, 64x64, 32 frames, 100 candidates/video; best of {args.repeats}")
    for protocol, r in report["protocols"].items():
        print(
            f"{protocol:<11} {r['seconds_best']:7.3f} s  (median {r['seconds_median']:.3f} s)  "
            f"{r['videos_per_s']:8.1f} videos/s   R@20 {r['R@20']:.2f}  R@100 {r['R@100']:.2f}"
        )


if __name__ == "__main__":
    main()
