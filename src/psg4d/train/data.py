"""Training data: one ``Dataset`` per source, a weighted mixture and its sampler.

Items are :class:`psg4d.data.schema.Sample`; the model's ``collate`` turns a
list of them into a batch, so nothing here knows about the model. The sampler
shards by rank like ``DistributedSampler`` and can start mid-epoch, which is
what makes resume exact.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from torch.utils.data import Dataset, Sampler

from psg4d.data.readers.base import DatasetReader
from psg4d.data.schema import Sample
from psg4d.data.vocab import training_vocab
from psg4d.errors import ConfigError, DataError
from psg4d.train.stages import DataConfig, DataSourceConfig, ExperimentConfig

log = logging.getLogger(__name__)

# (path, format) -> reader; the default is psg4d.data.readers.open_dataset.
DatasetOpener = Callable[[Path, "str | None"], DatasetReader]


def default_opener(path: Path, fmt: str | None) -> DatasetReader:
    from psg4d.data.readers import open_dataset

    return open_dataset(path, format=fmt)


class SceneDataset(Dataset):
    """The videos of one split of one dataset, read lazily through its reader.

    With ``cache=True`` each sample is kept in memory after its first read
    (meant for small datasets: the synthetic worlds, debugging subsets).
    """

    def __init__(self, *, reader: DatasetReader, split: str, max_videos: int | None = None, cache: bool = False,
                 lift_2d: bool = False):
        if split not in reader.splits:
            raise DataError(reader.root, f"split {split!r} not found; available splits: {reader.splits}")
        ids = reader.video_ids(split)
        if max_videos is not None:
            ids = ids[:max_videos]
        if not ids:
            raise DataError(reader.root, f"split {split!r} has no videos")
        self.reader = reader
        self.split = split
        self.video_ids: list[str] = list(ids)
        self.cache = cache
        self.lift_2d = lift_2d  # its samples are 2D images to lift to pseudo-4D clips
        self._cache: dict[int, Sample] = {}

    def __len__(self) -> int:
        return len(self.video_ids)

    def __getitem__(self, index: int) -> Sample:
        if self.cache and index in self._cache:
            return self._cache[index]
        sample = self.reader.read(self.video_ids[index])
        if self.lift_2d:
            sample = Sample(video=sample.video, graph=sample.graph, lifted=True)
        if self.cache:
            self._cache[index] = sample
        return sample


class MixtureDataset(Dataset):
    """Several datasets back to back; index ``i`` maps to (source, local index)."""

    def __init__(self, datasets: Sequence[Dataset], weights: Sequence[float]):
        if len(datasets) != len(weights) or not datasets:
            raise ValueError("need one weight per dataset and at least one dataset")
        self.datasets = list(datasets)
        self.weights = [float(w) for w in weights]
        self.offsets = [0]
        for d in self.datasets:
            self.offsets.append(self.offsets[-1] + len(d))

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, index: int) -> Sample:
        src = bisect.bisect_right(self.offsets, index) - 1
        return self.datasets[src][index - self.offsets[src]]


class MixtureSampler(Sampler[int]):
    """Weighted, seeded, rank-sharded sampling over a :class:`MixtureDataset`.

    Each epoch draws ``num_samples`` items (default: the mixture's size): the
    source of each draw is picked by weight, and within a source the videos are
    visited in a shuffled order that is reshuffled whenever it is used up. The
    epoch's list is padded to a multiple of ``num_replicas`` and rank ``r`` takes
    items ``r, r + R, ...`` (as ``DistributedSampler`` does), so ranks see
    disjoint shards. ``set_epoch`` and ``set_start`` (items of this rank already
    consumed) make the order reproducible and resumable.
    """

    def __init__(
        self,
        mixture: MixtureDataset,
        *,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        num_samples: int | None = None,
        shuffle: bool = True,
    ):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside [0, {num_replicas})")
        self.mixture = mixture
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.total = num_samples if num_samples is not None else len(mixture)
        self.shuffle = shuffle
        self.epoch = 0
        self.start = 0

    @property
    def per_rank(self) -> int:
        return -(-self.total // self.num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_start(self, start: int) -> None:
        self.start = start

    def epoch_indices(self) -> list[int]:
        """The whole epoch's global order (all ranks)."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        weights = torch.tensor(self.mixture.weights, dtype=torch.float64)
        n_src = len(self.mixture.datasets)
        if n_src == 1:
            sources = [0] * self.total
        else:
            sources = torch.multinomial(weights, self.total, replacement=True, generator=g).tolist()
        orders: list[list[int]] = [[] for _ in range(n_src)]
        out: list[int] = []
        for s in sources:
            if not orders[s]:
                n = len(self.mixture.datasets[s])
                perm = torch.randperm(n, generator=g).tolist() if self.shuffle else list(range(n))
                orders[s] = perm[::-1]  # popped from the end
            out.append(self.mixture.offsets[s] + orders[s].pop())
        pad = self.per_rank * self.num_replicas - len(out)
        out.extend(out[:pad])
        return out

    def __iter__(self) -> Iterator[int]:
        mine = self.epoch_indices()[self.rank :: self.num_replicas]
        return iter(mine[self.start :])

    def __len__(self) -> int:
        return max(0, self.per_rank - self.start)


def open_source(
    index: int, src: DataSourceConfig, data_cfg: DataConfig, opener: DatasetOpener | None = None
) -> DatasetReader:
    """The reader of one source, with a clear error when its folder is missing."""
    path = data_cfg.resolve(src)
    if not path.exists():
        hint = f" (relative to data.root={data_cfg.root!r})" if data_cfg.root and not Path(src.path).is_absolute() else ""
        raise ConfigError(
            f"data source [{index}]: {path} does not exist{hint}; set data.root or the source path"
            " (a synthetic world is made with `psg4d synth --preset hoi --out DIR`)"
        )
    return (opener or default_opener)(path, src.format)


class _Readers:
    """Opens each (path, format) once."""

    def __init__(self, data_cfg: DataConfig, opener: DatasetOpener | None):
        self.data_cfg, self.opener = data_cfg, opener
        self.readers: dict[tuple[str, str | None], DatasetReader] = {}

    def get(self, index: int, src: DataSourceConfig) -> DatasetReader:
        key = (str(self.data_cfg.resolve(src)), src.format)
        if key not in self.readers:
            self.readers[key] = open_source(index, src, self.data_cfg, self.opener)
        return self.readers[key]


def build_mixture(
    sources: Sequence[DataSourceConfig],
    data_cfg: DataConfig,
    *,
    opener: DatasetOpener | None = None,
    max_videos: int | None = None,
) -> MixtureDataset:
    """Open every source of a mix (readers are opened once per path/format)."""
    readers = _Readers(data_cfg, opener)
    datasets: list[SceneDataset] = []
    for i, src in enumerate(sources):
        reader = readers.get(i, src)
        cap = src.max_videos if max_videos is None else min(max_videos, src.max_videos or max_videos)
        n_videos = len(reader.video_ids(src.split)) if src.split in reader.splits else 0
        cache = min(n_videos, cap or n_videos) <= data_cfg.cache_max_videos
        datasets.append(SceneDataset(reader=reader, split=src.split, max_videos=cap, cache=cache, lift_2d=src.lift_2d))
        if reader.masks_are_boxes:
            log.warning("data source %s (%s) has boxes, not masks: its mask targets are the boxes", reader.root,
                        reader.format_name)
        log.info(
            "data source %s split %s: %d %s (weight %g%s)", reader.root, src.split, len(datasets[-1]),
            "images lifted to pseudo-4D" if src.lift_2d else "videos", src.weight, ", cached in memory" if cache else "",
        )
    return MixtureDataset(datasets, [s.weight for s in sources])


def collect_vocab(
    sources: Sequence[DataSourceConfig], data_cfg: DataConfig, *, opener: DatasetOpener | None = None
) -> tuple[list[str], list[str], dict[str, list[str]]]:
    """Object categories, predicates and each category's descriptions that occur in the graphs of
    ``sources`` (each source's split, its first ``max_videos``): :func:`psg4d.data.vocab.training_vocab`."""
    readers = _Readers(data_cfg, opener)

    def parts():
        for i, src in enumerate(sources):
            reader = readers.get(i, src)
            ids = reader.video_ids(src.split)
            yield reader, ids if src.max_videos is None else ids[: src.max_videos]

    vocab = training_vocab(parts())
    return vocab.objects, vocab.predicates, vocab.descriptions


def with_data_vocab(cfg: ExperimentConfig, opener: DatasetOpener | None = None) -> ExperimentConfig:
    """Fill a model config's empty ``object_vocab`` / ``predicate_vocab`` from the data.

    They seed the tiny tokenizer and the grammar, so they are fixed once for the
    whole experiment (all stages' training sources) and every stage builds the
    same tokenizer; set them in the config to pin them. The val sources never
    contribute: a category only validation holds must not enter the model.
    """
    model = cfg.model
    wanted = [a for a in ("object_vocab", "predicate_vocab") if hasattr(model, a) and not getattr(model, a)]
    describes = getattr(model, "chain_prob", 0) > 0 or getattr(model, "attribute_loss_weight", 0) > 0 or any(
        dict(s.kind_spec.model_settings).get("attribute_loss_weight", 0) > 0 for s in cfg.stages)
    if describes and not model.category_descriptions:
        wanted.append("category_descriptions")
    if not wanted:
        return cfg
    sources = [s for stage in cfg.stages for s in cfg.stage_data(stage)]
    objects, predicates, descriptions = collect_vocab(sources, cfg.data, opener=opener)
    found = {"object_vocab": objects, "predicate_vocab": predicates, "category_descriptions": descriptions}
    log.info("vocabularies from the data: %d object and %d predicate categories", len(objects), len(predicates))
    return dataclasses.replace(cfg, model=dataclasses.replace(model, **{a: found[a] for a in wanted}))
