"""The experiments' shared helpers: world sizes from split counts, building a world once, scoring."""

from __future__ import annotations

import math

import pytest

from psg4d.data.synth import SPLIT_FRACTIONS, SynthConfig, generate_or_reuse, items_for_splits, split_counts
from psg4d.errors import ConfigError
from psg4d.experiments.common import predict_and_score, protocol_metrics, synthetic_world


def test_items_for_splits_is_the_inverse_of_split_counts():
    assert SynthConfig().split_fractions == SPLIT_FRACTIONS
    for train in (0, 1, 3, 4, 8, 100, 400, 2000):
        for test in (0, 1, 3, 20, 21, 60, 100):
            n = items_for_splits(train, 0, test)
            if not train and not test:
                assert n == 0
                continue
            counts = split_counts(n, SPLIT_FRACTIONS)
            assert counts["train"] >= train and counts["test"] >= test
            # the sizes the experiments have always synthesised (their worlds stay the same)
            assert n == max(math.ceil(train / 0.7), math.ceil(test / 0.15)) + 2
    assert split_counts(items_for_splits(val=7), SPLIT_FRACTIONS)["val"] >= 7
    with pytest.raises(ConfigError, match=">= 0"):
        items_for_splits(-1)
    with pytest.raises(ConfigError, match="give val none"):
        items_for_splits(val=1, fractions=(0.8, 0.0, 0.2))


def _world(**kw):
    cfg = dict(videos=3, images=0, frames=2, size=16, workers=1, shadows=False)
    return SynthConfig(**{**cfg, **kw})


def test_generate_or_reuse_reuses_the_same_settings_only(tmp_path):
    data = tmp_path / "w"
    assert generate_or_reuse(_world(), data, progress=False) == data
    meta = data / "synth_meta.json"
    first = meta.stat().st_mtime_ns
    generate_or_reuse(_world(), data, progress=False)
    assert meta.stat().st_mtime_ns == first  # reused
    with pytest.raises(ConfigError, match="other settings"):
        generate_or_reuse(_world(seed=5), data, reuse="refuse_other", progress=False)
    generate_or_reuse(_world(seed=5), data, reuse="any", progress=False)
    assert meta.stat().st_mtime_ns == first  # any world there is kept
    generate_or_reuse(_world(seed=5), data, progress=False)
    assert meta.stat().st_mtime_ns != first  # other settings: synthesised again
    # a stamp kept elsewhere (the chain experiment's RUN_DIR/synth_config.json)
    stamp = tmp_path / "synth_config.json"
    generate_or_reuse(_world(seed=6), tmp_path / "v", stamp=stamp, reuse="refuse_other", progress=False)
    assert stamp.is_file() and not (tmp_path / "v" / "demo_synth_config.json").exists()
    with pytest.raises(ConfigError, match="reuse must be"):
        generate_or_reuse(_world(), data, reuse="sometimes")  # type: ignore[arg-type]


class _Oracle:
    """Predicts each video's ground truth."""

    def __init__(self, reader):
        self.reader = reader

    def predict(self, video):
        return self.reader.read_graph(video.video_id)


def test_synthetic_world_sized_by_split_counts_and_scored_under_both_protocols(tmp_path):
    from psg4d.data.readers import open_dataset

    data = synthetic_world(tmp_path / "w", train_videos=2, test_videos=2, frames=2, size=16, seed=0)
    reader = open_dataset(data / "4d")
    assert len(reader.video_ids("train")) >= 2 and len(reader.video_ids("test")) >= 2
    assert not open_dataset(data / "2d").video_ids("train")  # no images asked, none made
    seen = []
    scored = predict_and_score(_Oracle(reader), data / "4d", limit=2, each=lambda p, g: seen.append(g.video_id))
    assert [g.video_id for g in scored.truths] == seen == reader.video_ids("test")[:2]
    assert set(scored.metrics) == {"pvsg", "volumetric"} and scored.predict_s_per_video >= 0
    if any(g.relations for g in scored.truths):
        assert scored.metrics["pvsg"]["R@50"] == 100.0
    assert protocol_metrics(scored.predictions, {g.video_id: g for g in scored.truths}) == scored.metrics
