"""Training data: per-source datasets with caching, the weighted mixture and its sampler."""

from __future__ import annotations

from collections import Counter

import pytest
from test_train_toy import ToyOpener, ToyReader

from psg4d.errors import ConfigError, DataError
from psg4d.train.data import MixtureDataset, MixtureSampler, SceneDataset, build_mixture
from psg4d.train.stages import DataConfig, DataSourceConfig


def _mixture(tmp_path, sizes=(12, 4), weights=(1.0, 1.0)):
    readers = [ToyReader(tmp_path / f"r{i}", n_train=n) for i, n in enumerate(sizes)]
    return MixtureDataset([SceneDataset(reader=r, split="train") for r in readers], list(weights))


def test_cache_reads_each_video_once(tmp_path):
    reader = ToyReader(tmp_path)
    cached = SceneDataset(reader=reader, split="train", cache=True, max_videos=5)
    assert len(cached) == 5
    first = [cached[i].video.video_id for i in range(5)]
    assert [cached[i].video.video_id for i in range(5)] == first
    assert reader.reads == 5
    uncached = SceneDataset(reader=reader, split="train", cache=False)
    uncached[0], uncached[0]
    assert reader.reads == 7


def test_unknown_split_names_the_available_ones(tmp_path):
    with pytest.raises(DataError, match=r"split 'test' not found; available splits: \['train', 'val'\]"):
        SceneDataset(reader=ToyReader(tmp_path), split="test")


def test_mixture_indexing_crosses_sources(tmp_path):
    mix = _mixture(tmp_path)
    assert len(mix) == 16
    assert mix[11].video.video_id == "r0_tr011"
    assert mix[12].video.video_id == "r1_tr000"


def test_sampler_follows_weights_and_visits_small_sources_in_rounds(tmp_path):
    mix = _mixture(tmp_path, sizes=(12, 4), weights=(1.0, 3.0))
    sampler = MixtureSampler(mix, seed=1, num_samples=4000)
    idx = list(sampler)
    share = sum(i >= 12 for i in idx) / len(idx)
    assert share == pytest.approx(0.75, abs=0.03)
    # within a source every video comes once per round before any repeats
    small = [i for i in idx if i >= 12][:8]
    assert sorted(small[:4]) == [12, 13, 14, 15] and sorted(small[4:]) == [12, 13, 14, 15]


def test_sampler_shards_ranks_disjointly_like_distributed_sampler(tmp_path):
    mix = _mixture(tmp_path, sizes=(13,), weights=(1.0,))
    shards = [list(MixtureSampler(mix, seed=0, num_replicas=3, rank=r)) for r in range(3)]
    assert [len(s) for s in shards] == [5, 5, 5]  # padded to a multiple of the ranks
    full = MixtureSampler(mix, seed=0).epoch_indices()
    assert sorted(full) == list(range(13))
    counts = Counter(i for s in shards for i in s)
    assert set(counts) == set(range(13)) and sum(counts.values()) == 15


def test_sampler_epochs_differ_and_start_resumes_mid_epoch(tmp_path):
    mix = _mixture(tmp_path)
    s = MixtureSampler(mix, seed=5)
    s.set_epoch(0)
    e0 = list(s)
    s.set_epoch(1)
    e1 = list(s)
    assert e0 != e1
    s.set_start(6)
    assert list(s) == e1[6:] and len(s) == len(e1) - 6
    again = MixtureSampler(mix, seed=5)
    again.set_epoch(1)
    assert list(again) == e1


def test_build_mixture_resolves_root_and_shares_readers(tmp_path):
    (tmp_path / "a").mkdir()
    opener = ToyOpener()
    cfg = DataConfig(root=str(tmp_path), cache_max_videos=2)
    mix = build_mixture(
        [DataSourceConfig(path="a", weight=2.0), DataSourceConfig(path="a", split="val")], cfg, opener=opener
    )
    assert len(opener.readers) == 1 and str(tmp_path / "a") in opener.readers
    assert [len(d) for d in mix.datasets] == [12, 3] and mix.weights == [2.0, 1.0]
    assert [d.cache for d in mix.datasets] == [False, False]
    capped = build_mixture([DataSourceConfig(path="a")], cfg, opener=opener, max_videos=2)
    assert len(capped) == 2 and capped.datasets[0].cache
    with pytest.raises(ConfigError, match="relative to data.root"):
        build_mixture([DataSourceConfig(path="zzz")], cfg, opener=opener)
