"""``psg4d synth``: generate a synthetic 4D (and 2D) scene-graph dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from psg4d.data.synth.generate import SynthConfig, generate
from psg4d.utils.io import prepare_output_dir


def synth(
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (written atomically): 4d/, 2d/, synth_meta.json; an earlier synth output there is replaced."),
    preset: str = typer.Option("hoi", "--preset", help="hoi (egocentric hand-object; 4d/ in the PSG4D-HOI layout) or gta (third-person people; 4d/ in the PSG4D-GTA layout)."),
    videos: int = typer.Option(24, "--videos", help="Number of 4D RGB-D videos (split train/val/test)."),
    images: int = typer.Option(200, "--images", help="Number of 2D images (split train/val/test)."),
    frames: int = typer.Option(16, "--frames", help="Frames per video."),
    size: int = typer.Option(64, "--size", help="Frame width and height in pixels."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives identical annotations."),
    workers: int = typer.Option(0, "--workers", help="Worker processes (0: one per CPU core)."),
    camera_motion: bool = typer.Option(True, "--camera-motion/--static-camera", help="Slow camera drift and shake."),
    novel: Optional[str] = typer.Option(
        None, "--novel", help="Comma-separated object categories shown only in 4D test videos, never in 4D train/val "
        "nor in the 2D images (the held-out categories are seen in 2D); 'default': the preset's choice.",
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Move a non-empty --out that is not an earlier synth output aside (never deleted)."
    ),
) -> None:
    """Simulate, render and label a synthetic 4D panoptic scene-graph dataset."""
    cfg = SynthConfig(
        preset=preset, videos=videos, images=images, frames=frames, size=size, seed=seed,
        workers=workers, camera_motion=camera_motion, novel=novel or (),
    )  # fmt: skip
    prepare_output_dir(out, marker=("synth_meta.json",), what="psg4d synth", overwrite=overwrite)
    s = generate(cfg, out)
    typer.echo(
        f"wrote {sum(s.videos.values())} videos {s.videos} and {sum(s.images.values())} images {s.images} "
        f"to {s.out_dir} ({s.frames} frames in {s.seconds:.1f}s, {s.frames_per_second:.0f} frames/s)"
    )
