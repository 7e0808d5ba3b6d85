"""A small deterministic model and in-memory dataset that satisfy the training contract.

Imported by the other ``test_train_*`` modules (and by the scripts they run in
subprocesses), so the loop, checkpoints, resume and torchrun can be tested in
seconds without the 4D-LLM or the synthetic world.
"""

from __future__ import annotations

import json
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from psg4d.config import from_dict
from psg4d.data.readers.base import DatasetReader
from psg4d.data.schema import MaskTube, ObjectTrack, Relation, Sample, SceneGraph4D, Video4D

PREDICATES = ["holding", "touching", "looking at", "next to"]


class ToyModel(nn.Module):
    """Predicts per-predicate relation counts of a video from one random frame's colour
    statistics. Module names mirror the 4D-LLM's so stage prefixes apply; the random
    frame (torch RNG in ``collate``) and dropout make exact resume depend on restored RNG.
    ``pretrained``: module prefixes that stand in for weights loaded from a pretrained file
    (``pretrained_parameters()``), so a stage may freeze them; nothing is loaded."""

    def __init__(
        self, *, hidden: int = 16, dropout: float = 0.1, sleep_s: float = 0.0, pretrained: tuple[str, ...] = ()
    ):
        super().__init__()
        self.hidden, self.dropout, self.sleep_s = hidden, dropout, sleep_s
        self.pretrained = tuple(pretrained)
        self.encoder = nn.Linear(6, hidden)
        self.projector = nn.Linear(hidden, hidden)
        self.llm = nn.Sequential(nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, hidden))
        self.obj_proj = nn.Linear(hidden, hidden)
        self.mask_decoder = nn.Linear(hidden, len(PREDICATES))

    def pretrained_parameters(self) -> set[str]:
        return {n for n, _ in self.named_parameters() if any(n == p or n.startswith(p + ".") for p in self.pretrained)}

    @property
    def config(self) -> dict[str, Any]:
        return {"hidden": self.hidden, "dropout": self.dropout}

    def collate(self, samples: list[Sample]) -> dict[str, Any]:
        feats, targets = [], []
        for s in samples:
            t = int(torch.randint(s.video.num_frames, (1,)).item())
            frame = torch.from_numpy(s.video.rgb[t]).float().div(255.0).reshape(-1, 3)
            feats.append(torch.cat([frame.mean(0), frame.std(0)]))
            counts = torch.zeros(len(PREDICATES))
            for r in s.graph.relations:
                counts[PREDICATES.index(r.predicate)] += 1.0
            targets.append(counts)
        return {"x": torch.stack(feats), "y": torch.stack(targets), "video_ids": [s.video.video_id for s in samples]}

    def forward(self, x: torch.Tensor, y: torch.Tensor, video_ids: list[str] | None = None) -> dict[str, torch.Tensor]:
        if self.sleep_s:
            time.sleep(self.sleep_s)
        h = self.projector(torch.relu(self.encoder(x)))
        h = self.obj_proj(self.llm(h))
        pred = self.mask_decoder(h)
        mse = ((pred - y) ** 2).mean()
        return {"loss": mse, "mse": mse.detach(), "abs_err": (pred - y).abs().mean().detach()}

    def save_pretrained(self, out_dir: str | Path) -> None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps(self.config))
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(out_dir / "model.safetensors"))

    @classmethod
    def from_pretrained(cls, ckpt_dir: str | Path) -> "ToyModel":
        ckpt_dir = Path(ckpt_dir)
        model = cls(**json.loads((ckpt_dir / "config.json").read_text()))
        model.load_state_dict(load_file(str(ckpt_dir / "model.safetensors")))
        return model


def toy_factory(**kwargs: Any):
    return lambda model_cfg: ToyModel(**kwargs)


class ToyReader(DatasetReader):
    """Deterministic random videos (T=4, 8x8) with 1-4 relations each; ``root`` is
    only a label. Counts reads so caching can be checked."""

    format_name = "toy"
    marker = "toy.json"

    def __init__(self, root: str | Path, *, n_train: int = 12, n_val: int = 3, seed: int = 0):
        super().__init__(root)
        self.ids = {
            "train": [f"{Path(root).name}_tr{i:03d}" for i in range(n_train)],
            "val": [f"{Path(root).name}_va{i:03d}" for i in range(n_val)],
        }
        self.seed = seed
        self.reads = 0

    @property
    def splits(self) -> list[str]:
        return list(self.ids)

    def video_ids(self, split: str | None = None) -> list[str]:
        return self.ids[split] if split else [v for ids in self.ids.values() for v in ids]

    @property
    def object_vocab(self) -> list[str]:
        return ["person", "cup", "table"]

    @property
    def predicate_vocab(self) -> list[str]:
        return list(PREDICATES)

    def _rng(self, video_id: str) -> np.random.Generator:
        return np.random.default_rng([self.seed, zlib.crc32(video_id.encode())])

    def read_video(self, video_id: str) -> Video4D:
        self.reads += 1
        rng = self._rng(video_id)
        rgb = rng.integers(0, 256, size=(4, 8, 8, 3), dtype=np.uint8)
        return Video4D(rgb=rgb, depth=rng.random((4, 8, 8), dtype=np.float32), video_id=video_id)

    def num_frames(self, video_id: str) -> int:
        return 4

    def read_graph(self, video_id: str, *, with_masks: bool = True) -> SceneGraph4D:
        rng = self._rng(video_id)
        rng.integers(0, 256, size=(4, 8, 8, 3))
        objects = [
            ObjectTrack(object_id=i, category=c, tube=MaskTube.empty(4, 8, 8) if with_masks else None)
            for i, c in enumerate(["person", "cup", "table"])
        ]
        n_rel = int(rng.integers(1, 5))
        relations = [
            Relation(subject_id=0, object_id=int(rng.integers(1, 3)), predicate=PREDICATES[int(rng.integers(4))],
                     spans=[(0, 3)])
            for _ in range(n_rel)
        ]
        return SceneGraph4D(video_id=video_id, num_frames=4, height=8, width=8, objects=objects, relations=relations)


class ToyOpener:
    """``opener(path, format)`` for train(): one ToyReader per path (created on first use)."""

    def __init__(self, **reader_kwargs: Any):
        self.reader_kwargs = reader_kwargs
        self.readers: dict[str, ToyReader] = {}

    def __call__(self, path: Path, fmt: str | None) -> ToyReader:
        key = str(path)
        if key not in self.readers:
            self.readers[key] = ToyReader(path, **self.reader_kwargs)
        return self.readers[key]


def toy_experiment(root: Path, **overrides: Any):
    """An ExperimentConfig for the toy model: data sources are folders under ``root``
    (they must exist; their contents are not read)."""
    from psg4d.train.stages import ExperimentConfig

    for name in ("a", "b"):
        (root / name).mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {
        "model": {},
        "data": {"root": str(root), "train": [{"path": "a"}], "val": [{"path": "a", "split": "val"}]},
        "train": {
            "batch_size": 2, "lr": 3e-3, "warmup_steps": 2, "save_every": 5, "keep_last": 2,
            "val_every": 0, "val_recall": False, "progress": False, "num_threads": 1,
        },
        "stages": [{"name": "s1", "trainable": ["encoder", "projector", "llm", "obj_proj", "mask_decoder"],
                    "max_steps": 12}],
        "output_dir": str(root / "out"),
        "seed": 3,
    }
    for key, value in overrides.items():
        node = data
        parts = key.split("__")
        for p in parts[:-1]:
            node = node[p]
        node[parts[-1]] = value
    return from_dict(ExperimentConfig, data)


# --------------------------------------------------------------------------- tests of the toy itself


def test_toy_model_round_trips_through_save_pretrained(tmp_path):
    torch.manual_seed(0)
    model = ToyModel(hidden=8, dropout=0.0).eval()
    reader = ToyReader(tmp_path)
    batch = model.collate([reader.read(v) for v in reader.video_ids("train")[:3]])
    model.save_pretrained(tmp_path / "ck")
    loaded = ToyModel.from_pretrained(tmp_path / "ck").eval()
    assert torch.equal(model(**batch)["loss"], loaded(**batch)["loss"])
    assert batch["y"].sum() > 0


def test_toy_reader_is_deterministic(tmp_path):
    a, b = ToyReader(tmp_path / "x"), ToyReader(tmp_path / "x")
    vid = a.video_ids("train")[1]
    assert np.array_equal(a.read_video(vid).rgb, b.read_video(vid).rgb)
    assert [r.to_json() for r in a.read_graph(vid).relations] == [r.to_json() for r in b.read_graph(vid).relations]
    assert not np.array_equal(a.read_video(vid).rgb, a.read_video(a.video_ids("train")[2]).rgb)
