"""Accuracy of a trained 4D-LLM checkpoint against the frequency baseline, both protocols.

Predicts the first ``--limit`` videos of ``--split`` with the checkpoint, scores
R/mR@20/50/100 under ``pvsg`` and ``volumetric`` for the model and for the
trivial baseline (most frequent training triplets, whole-frame tubes), and adds
the diagnostics (grounding gap, teacher-forced mask quality) on ``--diag``
videos. Prints a table and writes ``OUT/metrics.json`` (+ the predictions).

    psg4d synth --preset hoi --videos 3000 --seed 1 --out runs/synth_hoi_big
    psg4d train --config configs/hoi_tiny.yaml
    python bench/bench_accuracy.py --ckpt runs/hoi_tiny/final --data runs/synth_hoi_big/4d \\
        --split test --limit 100 --out runs/hoi_tiny/bench_accuracy
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

import torch

from psg4d.data.readers import open_dataset
from psg4d.demo import evaluate_with_baseline, metrics_table
from psg4d.infer.diagnostics import format_reports, grounding, teacher_forced_masks
from psg4d.model.psg4d_llm import PSG4DModel
from psg4d.utils.io import atomic_write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True, help="dataset folder (e.g. runs/synth_hoi_big/4d)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit", type=int, default=100, help="first N videos of the split")
    ap.add_argument("--diag", type=int, default=8, help="videos for the diagnostics (0: skip)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    metrics = evaluate_with_baseline(args.ckpt, args.data, args.out, split=args.split, limit=args.limit,
                                     threads=args.threads)
    seconds = time.perf_counter() - t0
    result: dict = {
        "ckpt": str(args.ckpt), "data": str(args.data), "split": args.split, "videos": args.limit,
        "predict_and_score_s": round(seconds, 1), "s_per_video": round(seconds / args.limit, 2),
        "machine": f"{platform.processor() or platform.machine()}, {args.threads} threads",
        "date": date.today().isoformat(), "metrics": metrics,
    }
    print(metrics_table(metrics))
    if args.diag > 1:
        model = PSG4DModel.from_pretrained(args.ckpt)
        reader = open_dataset(args.data)
        samples = [reader.read(v) for v in reader.video_ids(args.split)[: args.diag]]
        g, m = grounding(model, samples), teacher_forced_masks(model, samples)
        print(format_reports(g, m))
        result["grounding_gap"], result["grounding_top1"] = g.gap, g.top1
        result["tf_mask_hit"], result["tf_mask_hit_per_category"] = m.hit, m.per_category
    atomic_write_json(args.out / "bench_accuracy.json", result, indent=1)
    print(json.dumps({k: v for k, v in result.items() if k != "metrics" and not isinstance(v, dict)}))


if __name__ == "__main__":
    main()
