"""``psg4d data ...``: inspect a dataset in any supported format, convert it to the canonical layout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from psg4d.data.inspect import format_inspection, inspect_dataset
from psg4d.data.readers import known_formats, open_dataset
from psg4d.data.readers.canonical import write_canonical
from psg4d.errors import DataError
from psg4d.utils.io import prepare_output_dir

data_app = typer.Typer(
    name="data",
    help="Dataset tools: inspect a dataset, convert it to the canonical psg4d layout.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

_FORMAT_HELP = f"Dataset format; detected from the marker file when omitted. Known: {known_formats()}."


@data_app.command("inspect")
def inspect_cmd(
    path: Path = typer.Argument(..., help="Dataset root folder."),
    format: Optional[str] = typer.Option(None, "--format", "-f", help=_FORMAT_HELP),
    split: Optional[str] = typer.Option(None, "--split", "-s", help="Only this split."),
    as_json: bool = typer.Option(False, "--json", help="Print the statistics as JSON."),
) -> None:
    """Per-split counts (videos, frames, objects, relations) and a predicate histogram.
    Reads scene graphs only, never frames."""
    reader = open_dataset(path, format)
    if split is not None and split not in reader.splits:
        raise DataError(path, f"no split {split!r} (splits: {', '.join(reader.splits)})")
    summary = inspect_dataset(reader, splits=None if split is None else [split], progress=False)
    typer.echo(json.dumps(summary, indent=2) if as_json else format_inspection(summary))


@data_app.command("convert")
def convert_cmd(
    src: Path = typer.Argument(..., help="Source dataset root folder."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder, written atomically when complete; an earlier conversion there is replaced."),
    format: Optional[str] = typer.Option(None, "--format", "-f", help=_FORMAT_HELP),
    split: Optional[str] = typer.Option(None, "--split", "-s", help="Convert only this split."),
    name: Optional[str] = typer.Option(None, "--name", help="Dataset name stored in the index (default: source folder name)."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Move a non-empty --out that is not an earlier conversion aside (never deleted)."
    ),
) -> None:
    """Write a dataset in the canonical psg4d layout (psg4d_dataset.json, graphs/, videos/)."""
    reader = open_dataset(src, format)
    prepare_output_dir(
        out, marker=("psg4d_dataset.json",), what="psg4d data convert", overwrite=overwrite,
        protect=(Path(src), reader.root),
    )  # fmt: skip
    info = write_canonical(reader, out, split=split, name=name, progress=True)
    typer.echo(
        f"wrote {info['num_videos']} videos ({info['num_frames']} frames; splits: "
        f"{', '.join(f'{k}={len(v)}' for k, v in info['splits'].items())}) to {out}"
    )
