"""Throughput of the synthetic world: rendering alone, a full video (simulate + render +
label + mask tubes), and generation with writing to disk (PSG4D-HOI + OpenPSG layouts).

    python bench/bench_synth.py --preset hoi --videos 40 --frames 16 --size 64 --workers 2

Prints one line per stage with RGB-D frames per second. Rendering and full-video numbers
are measured in this process (one core); the generation number uses ``--workers`` processes.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from psg4d.data.synth.generate import SynthConfig, generate, simulate_scene, simulate_video
from psg4d.data.synth.render import render
from psg4d.data.synth.primitives import scene_primitives


def _best(fn, repeats: int) -> tuple[float, float]:
    """Best wall-clock and best CPU (this process) seconds over ``repeats`` runs. On a
    shared machine the CPU time tells what one core does when it is not waiting."""
    wall, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return min(wall), min(cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="hoi", choices=["hoi", "gta"])
    ap.add_argument("--videos", type=int, default=40)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-shadows", action="store_true", help="render without shadow rays")
    args = ap.parse_args()
    cfg = SynthConfig(preset=args.preset, videos=args.videos, images=0, frames=args.frames, size=args.size,
                      workers=args.workers, shadows=not args.no_shadows)  # fmt: skip
    n_frames = args.videos * args.frames
    scenes = [simulate_scene(cfg, "train", i) for i in range(args.videos)]
    prims = [scene_primitives(s) for s, _ in scenes]

    def render_all() -> None:
        for (s, rng), p in zip(scenes, prims):
            render(p, s.camera, s.lighting, rng=rng, rgb_noise=cfg.rgb_noise, depth_noise=cfg.depth_noise,
                   shadows=cfg.shadows)  # fmt: skip

    t_render, c_render = _best(render_all, args.repeats)
    print(f"render only (1 process):            {n_frames / t_render:8.0f} frames/s wall, "
          f"{n_frames / c_render:6.0f} per CPU-second  ({t_render:.2f}s for {n_frames} frames)")  # fmt: skip

    def full() -> None:
        for i in range(args.videos):
            simulate_video(cfg, "train", i)

    t_full, c_full = _best(full, args.repeats)
    print(f"simulate+render+label (1 process):  {n_frames / t_full:8.0f} frames/s wall, "
          f"{n_frames / c_full:6.0f} per CPU-second  ({t_full:.2f}s)")  # fmt: skip

    def gen() -> None:
        with tempfile.TemporaryDirectory() as d:
            generate(cfg, Path(d) / "out", progress=False)

    t_gen, _ = _best(gen, max(1, args.repeats - 1))
    print(
        f"generate + write ({args.workers} workers):       {n_frames / t_gen:8.0f} frames/s  ({t_gen:.2f}s, "
        f"{args.videos} videos x {args.frames} frames at {args.size}x{args.size})"
    )


if __name__ == "__main__":
    main()
