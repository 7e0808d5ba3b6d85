"""``psg4d experiment NAME``: run an experiment of :data:`psg4d.experiments.EXPERIMENTS`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

experiment_app = typer.Typer(
    help="Run an experiment; results go to OUT/NAME.json (+ a plot), by default under runs/experiments/NAME.",
    no_args_is_help=True,
)


@experiment_app.command("predict")
def predict_experiment(
    out: Path = typer.Option(
        Path("runs/experiments/predict"), "--out",
        help="Folder for predict.json and predict.svg (bench/results: the shipped ones, which BENCHMARKS.md cites).",
    ),
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="Checkpoint to measure (default: train the demo's)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset of the videos to predict (with --ckpt)."),
    split: str = typer.Option("test", "--split", help="Split whose videos are predicted."),
    videos: int = typer.Option(20, "--videos", help="Timed videos (after one warm-up video)."),
    run_dir: Path = typer.Option(Path("runs/experiments/predict"), "--run-dir",
                                 help="Where the world and model are built without --ckpt (reused)."),
    long_frames: int = typer.Option(800, "--long-frames", help="Frames of the long full-resolution video."),
    quick: bool = typer.Option(False, "--quick", help="Toy size (a few videos, a briefly trained model)."),
) -> None:
    """Per-video prediction time, cached vs uncached scoring, idle and contended; long-video memory."""
    from psg4d.experiments.predict_speed import PredictSpeedConfig, run

    result = run(PredictSpeedConfig(out=out, ckpt=ckpt, data=data, split=split, videos=videos, run_dir=run_dir,
                                    long_frames=long_frames, quick=quick))
    keys = ("uncached_s_per_video", "cached_s_per_video", "speedup", "contended_over_idle", "threads", "videos")
    typer.echo(json.dumps({k: result[k] for k in keys}, indent=1))


@experiment_app.command("transfer")
def transfer_experiment(
    out: Path = typer.Option(
        Path("runs/experiments/transfer"), "--out",
        help="Folder for transfer.json and the feature plots (bench/results: the shipped ones, which BENCHMARKS.md cites).",
    ),
    run_dir: Path = typer.Option(Path("runs/experiments/transfer"), "--run-dir",
                                 help="Where the world and the training runs are built (reused)."),
    sizes: list[int] = typer.Option([100, 400], "--sizes", help="4D training videos per arm (repeatable)."),
    images: int = typer.Option(2000, "--images", help="2D training images lifted to pseudo-4D."),
    test_videos: int = typer.Option(100, "--test-videos", help="4D test videos scored."),
    quick: bool = typer.Option(False, "--quick", help="Toy size: every stage a few steps (numbers meaningless)."),
) -> None:
    """The 2D-to-4D transfer against 4D-only training (and equal steps), RGB-D and RGB-only input."""
    from psg4d.experiments.transfer import TransferExperimentConfig, run

    records = run(TransferExperimentConfig(out=out, run_dir=run_dir, sizes=list(sizes), images=images,
                                           test_videos=test_videos, quick=quick))
    for r in records:
        r50 = r["metrics"]["pvsg"]["R@50"]
        typer.echo(f"{r['arm']:<22}{r['num_4d_videos']:>5} 4D {r['input']:<5} pvsg R@50 {r50:6.2f}"
                   f"  held-out R@50 {r['held_out_recall@50']}")


@experiment_app.command("long_video")
def long_video_experiment(
    out: Path = typer.Option(
        Path("runs/experiments/long_video"), "--out",
        help="Folder for long_video.json and long_video.svg (bench/results: the shipped ones, which BENCHMARKS.md cites).",
    ),
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="Checkpoint to measure (default: train the demo's)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset whose test video makes the clip (with --ckpt)."),
    split: str = typer.Option("test", "--split", help="Split of the clip's source video."),
    lengths: list[int] = typer.Option([100, 1000, 10000], "--lengths", help="Video lengths in frames (repeatable)."),
    height: int = typer.Option(576, "--height", help="Frame height of the clip."),
    width: int = typer.Option(768, "--width", help="Frame width of the clip."),
    threads: int = typer.Option(2, "--threads", help="torch threads of the measured process."),
    run_dir: Path = typer.Option(Path("runs/experiments/long_video"), "--run-dir",
                                 help="Where the clips (and, without --ckpt, the world and model) are built."),
    quick: bool = typer.Option(False, "--quick", help="Toy size: 20/40/80 frames of 96x128 (numbers meaningless)."),
) -> None:
    """Frames/s and peak RSS of `psg4d predict` (streaming, trained model) on 100 to 10,000-frame videos."""
    from psg4d.experiments.long_video import LongVideoConfig, run

    result = run(LongVideoConfig(out=out, ckpt=ckpt, data=data, split=split, lengths=list(lengths), height=height,
                                 width=width, threads=threads, run_dir=run_dir, quick=quick))
    keys = ("lengths", "frames_per_s", "peak_rss_mb", "rss_ratio", "rss_goal_met", "fps_goal_met")
    typer.echo(json.dumps({k: result[k] for k in keys}, indent=1))


@experiment_app.command("chain")
def chain_experiment(
    out: Path = typer.Option(
        Path("runs/experiments/chain"), "--out",
        help="Folder for chain.json and chain.svg (bench/results: the shipped ones, which BENCHMARKS.md cites).",
    ),
    run_dir: Path = typer.Option(Path("runs/experiments/chain"), "--run-dir",
                                 help="Where the world and the training runs are built (reused)."),
    llms: list[str] = typer.Option(["tiny", "smollm2-135m"], "--llms", help="LLM presets (repeatable)."),
    videos: int = typer.Option(200, "--videos", help="4D training videos."),
    images: int = typer.Option(800, "--images", help="2D training images lifted to pseudo-4D."),
    test_videos: int = typer.Option(30, "--test-videos", help="4D test videos scored."),
    world_seed: int = typer.Option(29, "--world-seed", help="The judged world (never one that designed the recipes)."),
    seeds: list[int] = typer.Option([0, 1, 2], "--seeds", help="Training seeds (repeatable): mean ± std over them."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda (training and prediction)."),
    namer: Optional[str] = typer.Option(
        None, "--namer", help="A pretrained LM (gemma3-270m, smollm2-135m) that names the chain's unknown objects "
        "over the vocabulary as one more arm (the same predictions named again)."),
    namer_scoring: str = typer.Option(
        "raw", "--namer-scoring", help="How --namer scores the vocabulary: raw or calibrated (default: what "
        "psg4d experiment naming's validation group chose)."),
    attribute_form: str = typer.Option(
        "geometry", "--attribute-form", help="Where the size and shape words are read from: geometry (measured "
        "from the tube's depth), map (the attribute head's cells) or both (the two readings added)."),
    design: bool = typer.Option(False, "--design", help="Run on a design world (--world-seed 0, 1 or 11) to inform "
                                "the design: judges nothing, and the JSON says so."),
    quick: bool = typer.Option(False, "--quick", help="Toy size: every stage a few steps (numbers meaningless)."),
) -> None:
    """Chained vs direct inference x tiny vs SmolLM2: recall, zero-shot recall on novel categories."""
    from psg4d.experiments.chain import ChainExperimentConfig, run

    result = run(ChainExperimentConfig(out=out, run_dir=run_dir, llms=list(llms), videos=videos, images=images,
                                       test_videos=test_videos, world_seed=world_seed, seeds=list(seeds),
                                       device=device, namer=namer, namer_scoring=namer_scoring,
                                       attribute_form=attribute_form, design=design, quick=quick))
    for r in result["summary"]:
        mode = r["mode"] + (f" ({r['naming']})" if r["naming"] else "")
        r50, z50 = r["metrics.pvsg.R@50"], r["zR@50_novel"]
        typer.echo(f"{r['llm']:<14}{mode:<20} pvsg R@50 {r50['mean']} ± {r50['std']}"
                   f"  zR@50 novel {z50['mean']} ± {z50['std']}  turns at the limit {r['turns_at_limit']['mean']}"
                   f"  naming {r['naming_probe.accuracy']['mean']} (chance {result['naming_chance']})")


@experiment_app.command("naming")
def naming_experiment(
    out: Path = typer.Option(
        Path("runs/experiments/naming"), "--out",
        help="Folder for naming.json and naming.svg (bench/results: the shipped ones, which BENCHMARKS.md cites).",
    ),
    llms: list[str] = typer.Option(["smollm2-135m", "gemma3-270m"], "--llm",
                                   help="Language models side by side (repeatable): smollm2-135m, gemma3-270m "
                                        "(pretrained) or tiny (random: chance)."),
    quick: bool = typer.Option(False, "--quick", help="The tiny LLM only (numbers meaningless)."),
) -> None:
    """Held-out categories named from their descriptions alone by each LM, over the whole vocabulary."""
    from psg4d.experiments.naming import NamingConfig, run

    result = run(NamingConfig(out=out, llms=list(llms), quick=quick))
    for name, by_scoring in result["llms"].items():
        for scoring, r in by_scoring.items():
            lm = f"{name} ({scoring})"
            for group, probe in r["groups"].items():
                typer.echo(f"{lm:<26}{group:<18} named right {probe['accuracy']:.2f}  {probe['named']}")
            typer.echo(f"{lm:<26}{'held out, all':<18} named right {r['accuracy']:.2f}; validation (leave one "
                       f"out) {r['validation_leave_one_out']['accuracy']:.2f} (chance {result['chance']:.3f})")
    chosen = result["chosen_on_validation"]
    typer.echo(f"chosen on validation: {chosen['llm']}, {chosen['scoring']} scores")


@experiment_app.command("colour_reading")
def colour_reading_experiment(
    out: Path = typer.Option(
        Path("runs/experiments/colour_reading"), "--out",
        help="Folder for colour_reading.json and colour_reading.svg (bench/results: the shipped ones).",
    ),
    run_dir: Path = typer.Option(Path("runs/experiments/colour_reading"), "--run-dir",
                                 help="Where the world is built (reused)."),
    world_seed: int = typer.Option(1, "--world-seed", help="A design world (this experiment chooses defaults)."),
    steps: list[int] = typer.Option([150, 1500], "--steps", help="Training budgets of the head (repeatable)."),
    lrs: list[float] = typer.Option([0.001, 0.01], "--lr", help="Learning rates of the head (repeatable)."),
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="A checkpoint trained on the design world: its own "
                                        "head and encoder read, every field scored, nothing trained (with --data)."),
    data: Optional[Path] = typer.Option(None, "--data", help="With --ckpt: the dataset folder of its design world."),
    quick: bool = typer.Option(False, "--quick", help="Toy size (numbers meaningless)."),
) -> None:
    """Design: the attribute head's colour read under a tube, summed or against the ring around it."""
    from psg4d.experiments.colour_reading import ColourReadingConfig, run

    result = run(ColourReadingConfig(out=out, run_dir=run_dir, world_seed=world_seed, steps=list(steps),
                                     lrs=list(lrs), ckpt=ckpt, data=data, quick=quick))
    for a in result["arms"]:
        budget = f"{a['steps']:>6} steps  lr {a['lr']:<7g}" if "steps" in a else ""
        fields = "  ".join(f"{k} {a[k]:6.2f} %" for k in ("colour", "pattern_colour", "size", "shape", "all") if k in a)
        typer.echo(f"{budget}{a['reading']:<9}{a['tube']:<9} {fields}  ({a['objects']} objects)")
    typer.echo("chosen: " + ", ".join(f"{k} {v}" for k, v in result["chosen"].items() if k != "rule"))


@experiment_app.command("form_reading")
def form_reading_experiment(
    out: Path = typer.Option(
        Path("runs/experiments/form_reading"), "--out",
        help="Folder for form_reading.json and form_reading.svg (bench/results: the shipped ones).",
    ),
    run_dir: Path = typer.Option(Path("runs/experiments/form_reading"), "--run-dir",
                                 help="Where the world is built (reused)."),
    world_seed: int = typer.Option(1, "--world-seed", help="A design world (this experiment chooses defaults)."),
    aboves: list[float] = typer.Option([0.0, 0.005, 0.01, 0.02, 0.05, 0.08], "--above",
                                       help="Snap tubes to the pixels this many metres in front of their "
                                       "surroundings (0: not snapped; repeatable)."),
    lrs: list[float] = typer.Option([0.003, 0.01], "--lr", help="Learning rates of the reader (repeatable)."),
    hiddens: list[int] = typer.Option([0, 32], "--hidden", help="Widths of the reader (0: linear; repeatable)."),
    seeds: list[int] = typer.Option([0, 1, 2], "--seeds", help="Training seeds (repeatable); scores are their means."),
    quick: bool = typer.Option(False, "--quick", help="Toy size (numbers meaningless)."),
) -> None:
    """Design: size and shape measured from a tube's depth, by snapping threshold, width and learning rate."""
    from psg4d.experiments.form_reading import FormReadingConfig, run

    result = run(FormReadingConfig(out=out, run_dir=run_dir, world_seed=world_seed, aboves=list(aboves),
                                   lrs=list(lrs), hiddens=list(hiddens), seeds=list(seeds), quick=quick))
    for a in result["arms"]:
        v, n = a["validation"], a["novel_test"]
        typer.echo(f"above {a['above']:<6g} width {a['hidden']:<3} lr {a['lr']:<7g} validation size {v['size']} % "
                   f"shape {v['shape']} % both {v['both']} ± {v['both_std']} % ({v['objects']})  novel (test) both {n['both']} % "
                   f"({n['objects']})")
    typer.echo("chosen: " + ", ".join(f"{k} {v}" for k, v in result["chosen"].items() if k != "rule"))


@experiment_app.command("compare")
def compare_experiment(
    out: Path = typer.Option(
        Path("runs/experiments/compare"), "--out",
        help="Folder for compare.json and compare.svg (bench/results: the shipped ones, which BENCHMARKS.md cites).",
    ),
    run_dir: Path = typer.Option(Path("runs/experiments/compare"), "--run-dir",
                                 help="Where the worlds and the pipeline runs are built (reused)."),
    hoi_run_dir: Optional[Path] = typer.Option(
        None, "--hoi-run-dir", help="The HOI world and 4D-LLM runs in the transfer experiment's layout (reused; "
        "e.g. runs/experiments/transfer). Default: RUN_DIR/hoi."),
    presets: list[str] = typer.Option(["hoi", "gta"], "--presets", help="Synthetic presets (repeatable)."),
    methods: list[str] = typer.Option(
        ["pipeline", "pipeline_no_depth", "pipeline_no_temporal", "4d_llm", "4d_llm_transfer"], "--methods",
        help="Arms (repeatable)."),
    videos: int = typer.Option(100, "--videos", help="4D training videos."),
    test_videos: int = typer.Option(100, "--test-videos", help="4D test videos scored."),
    segment_steps: int = typer.Option(1500, "--segment-steps", help="Segmenter training steps."),
    relation_steps: int = typer.Option(1500, "--relation-steps", help="Relation-model training steps."),
    quick: bool = typer.Option(False, "--quick", help="Toy size: every stage a few steps (numbers meaningless)."),
) -> None:
    """The PSG4DFormer pipeline baseline (and ablations) against the 4D-LLM, same data, same evaluator."""
    from psg4d.experiments.compare import CompareExperimentConfig, run

    records = run(CompareExperimentConfig(out=out, run_dir=run_dir, hoi_run_dir=hoi_run_dir, presets=list(presets),
                                          methods=list(methods), videos=videos, test_videos=test_videos,
                                          segment_steps=segment_steps, relation_steps=relation_steps, quick=quick))
    for r in records:
        typer.echo(f"{r['preset']:<5}{r['method']:<22} pvsg R@50 {r['metrics']['pvsg'].get('R@50', float('nan')):6.2f}"
                   f"  volumetric R@50 {r['metrics']['volumetric'].get('R@50', float('nan')):6.2f}"
                   f"  tube vIoU {r['mean_tube_viou']}  PQ {r['panoptic_quality']['PQ']}")


@experiment_app.command("reading")
def reading_experiment(
    out: Path = typer.Option(
        Path("runs/experiments/reading"), "--out",
        help="Folder for reading.json and reading.svg (bench/results: the shipped ones, which BENCHMARKS.md cites).",
    ),
    run_dir: Path = typer.Option(Path("runs/experiments/reading"), "--run-dir",
                                 help="Where the world and the training runs are built (reused)."),
    world_seed: int = typer.Option(23, "--world-seed", help="Seed of the judged world (never one used for design)."),
    seeds: list[int] = typer.Option([0, 1, 2], "--seeds", help="Training seeds of every arm (repeatable)."),
    steps: int = typer.Option(400, "--steps", help="Training steps of every run (the demo's by default)."),
    arms: list[str] = typer.Option(["plain", "time", "region"], "--arms",
                                   help="Arms (repeatable): plain, time, region."),
    quick: bool = typer.Option(False, "--quick", help="Toy size: a few steps, one seed (numbers meaningless)."),
) -> None:
    """Does the 4D-LLM read the video and the order of its frames? Frame tokens, reversed clips and region
    feedback, fair protocol."""
    from psg4d.experiments.reading import ReadingConfig, run

    result = run(ReadingConfig(out=out, run_dir=run_dir, world_seed=world_seed, seeds=list(seeds), steps=steps,
                               arms=list(arms), quick=quick))
    def ms(stat: dict) -> str:
        return "n/a" if stat["mean"] is None else f"{stat['mean']:.2f} ± {stat['std']:.2f}"

    for arm, s in result["summary"].items():
        typer.echo(f"{arm:<8} pvsg R@50 {ms(s['ranked.pvsg_R@50'])}  mR@50 {ms(s['ranked.pvsg_mR@50'])}  volumetric "
                   f"R@50 {ms(s['ranked.volumetric_R@50'])}  own-video top1 {ms(s['grounding_top1'])}  reversed "
                   f"right {ms(s['reversed_accuracy'])}")
