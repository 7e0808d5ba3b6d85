"""Streaming inference: peak memory and speed against video length.

Runs :class:`psg4d.infer.streaming.StreamingPredictor` with the colour-segmentation
baseline over synthetic 64x64 RGB-D moving-blocks clips generated frame by frame
(never held whole), at several lengths. Each length runs in a fresh Python
process so that its peak RSS is its own: once under ``tracemalloc`` (peak of
Python-level allocations, numpy buffers included) and once without it (frames/s
and peak RSS).

    python bench/bench_streaming.py                  # 100, 1000, 10000 frames
    python bench/bench_streaming.py --frames 100 1000 --window 16 --stride 8
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path


def _child(n: int, window: int, stride: int, size: int, trace: bool) -> dict:
    # the colour baseline is a test fixture (tests/_fixtures_colour_baseline.py), not part of the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from _fixtures_colour_baseline import ColourSegmentationPredictor, moving_blocks
    from psg4d.infer.streaming import StreamingPredictor

    sp = StreamingPredictor(
        predict_window=ColourSegmentationPredictor().predict, window=window, stride=stride, progress=False
    )
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "graph.json"
        if trace:
            tracemalloc.start()
        t0 = time.perf_counter()
        summary = sp.run(moving_blocks(n, size=size), out_path=out, video_id=f"blocks{n}")
        secs = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1] if trace else None
        if trace:
            tracemalloc.stop()
        out_bytes = out.stat().st_size
    return {
        "frames": n,
        "seconds": secs,
        "fps": n / secs,
        "tracemalloc_peak_mb": None if peak is None else peak / 2**20,
        "rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_mb": rss_before / 1024,
        "windows": summary.num_windows,
        "objects": summary.num_objects,
        "relations": summary.num_relations,
        "output_mb": out_bytes / 2**20,
    }


def _run_child(args: argparse.Namespace, n: int, trace: bool) -> dict:
    cmd = [sys.executable, __file__, "--child", str(n), "--window", str(args.window), "--stride", str(args.stride),
           "--size", str(args.size)] + (["--trace"] if trace else [])
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, nargs="+", default=[100, 1000, 10000])
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--stride", type=int, default=8)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(_child(args.child, args.window, args.stride, args.size, args.trace)))
        return

    rows = []
    for n in args.frames:
        traced = _run_child(args, n, trace=True)
        plain = _run_child(args, n, trace=False)
        rows.append({**plain, "tracemalloc_peak_mb": traced["tracemalloc_peak_mb"]})
    base = rows[0]
    print(f"window={args.window} stride={args.stride} frames {args.size}x{args.size} RGB-D, colour baseline")
    print("| frames | windows | frames/s | tracemalloc peak (MiB) | x first | peak RSS (MiB) | x first | output (MiB) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['frames']} | {r['windows']} | {r['fps']:.0f} | {r['tracemalloc_peak_mb']:.2f} | "
            f"{r['tracemalloc_peak_mb'] / base['tracemalloc_peak_mb']:.2f} | {r['rss_peak_mb']:.0f} | "
            f"{r['rss_peak_mb'] / base['rss_peak_mb']:.2f} | {r['output_mb']:.2f} |"
        )


if __name__ == "__main__":
    main()
