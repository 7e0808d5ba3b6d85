"""The 4D layouts ``generate`` can write: an explicit table of reader format -> writer.

Each preset names its layout (``PresetSpec.format_4d``), so the world a preset
imitates is written the way the real dataset is laid out (``hoi``: PSG4D-HOI,
``gta``: PSG4D-GTA) and read back by that format's reader. The writers live
beside their readers (``psg4d.data.readers.<format>``); this module only adapts
them to the synthetic vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from psg4d.data.readers.gta import GTAReader, write_gta_index, write_gta_video
from psg4d.data.readers.hoi import HOIReader, write_hoi_index, write_hoi_video
from psg4d.data.schema import Sample
from psg4d.data.synth.world import Vocabulary


@dataclass(frozen=True, kw_only=True)
class Layout4D:
    """One 4D layout: per-video files (worker processes), then the index (written last)."""

    format: str  # the name open_dataset detects it as (psg4d.data.readers.FORMATS)
    # (dataset root, sample, vocabulary) -> the video's index entry
    write_video: Callable[[Path, Sample, Vocabulary], dict]
    # (dataset root, entries, vocabulary, {split: [video ids]})
    write_index: Callable[[Path, list[dict], Vocabulary, dict[str, list[str]]], None]


def _hoi_video(root: Path, sample: Sample, vocab: Vocabulary) -> dict:
    # categories index = the preset's full vocabulary, so mask ids are stable across splits
    return write_hoi_video(root, sample, categories=list(vocab.all_categories))


def _hoi_index(root: Path, entries: list[dict], vocab: Vocabulary, splits: dict[str, list[str]]) -> None:
    write_hoi_index(
        root, entries, categories=list(vocab.all_categories), predicates=list(vocab.predicates), splits=splits
    )


def _gta_video(root: Path, sample: Sample, vocab: Vocabulary) -> dict:
    return write_gta_video(root, sample, stuff_classes=vocab.stuff_classes)


def _gta_index(root: Path, entries: list[dict], vocab: Vocabulary, splits: dict[str, list[str]]) -> None:
    write_gta_index(
        root, entries, thing_classes=vocab.thing_classes, stuff_classes=vocab.stuff_classes,
        predicates=vocab.predicates, splits=splits,
    )  # fmt: skip


LAYOUTS_4D: dict[str, Layout4D] = {
    HOIReader.format_name: Layout4D(format=HOIReader.format_name, write_video=_hoi_video, write_index=_hoi_index),
    GTAReader.format_name: Layout4D(format=GTAReader.format_name, write_video=_gta_video, write_index=_gta_index),
}
