"""Two gloo processes, each scoring half of the videos, all-reduce to the one-process numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch.distributed as dist
import torch.multiprocessing as mp
from test_eval_support import noisy_prediction, random_gt

from psg4d.eval import SceneGraphRecall, ZeroShot, evaluate

VARIANTS = [
    # (protocol, fixed predicate list?) -- without one, ranks merge their vocabularies first
    ("pvsg", True),
    ("volumetric", False),
]
# relations involving a cup or a table: zR@K sums must reduce like the others
ZERO_SHOT = ZeroShot(novel_categories={"cup", "table"})


def make_split():
    rng = np.random.default_rng(7)
    # half of the GT graphs carry no predicate vocabulary, so the ranks grow theirs in different orders
    gts = [random_gt(rng, f"vid{i}", n_rel=int(rng.integers(1, 7)), with_vocab=i % 2 == 0) for i in range(8)]
    preds = [noisy_prediction(rng, g) for g in gts]
    return preds[:-1], gts  # the last video has no prediction


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        preds, gts = make_split()
        by_id = {p.video_id: p for p in preds}
        results = {}
        for protocol, fixed in VARIANTS:
            m = SceneGraphRecall(protocol=protocol, ks=(1, 5, 20), zero_shot=ZERO_SHOT,
                                 predicates=["holding", "on", "next to", "looking at", "touching"] if fixed else None)
            for g in gts[rank::world]:
                m.update(by_id.get(g.video_id), g)
            results[protocol] = m.compute()
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


def test_two_processes_match_one(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    preds, gts = make_split()
    for protocol, fixed in VARIANTS:
        kw = {"predicates": ["holding", "on", "next to", "looking at", "touching"]} if fixed else {}
        single = evaluate(preds, gts, protocol=protocol, ks=(1, 5, 20), zero_shot=ZERO_SHOT, **kw)
        single = json.loads(json.dumps(single))
        assert single["num_gt_relations"] > 0 and single["R@20"] > 0
        assert single["zero_shot"]["num_gt_relations"] > 0 and single["zR@20"] > 0
        for rank in range(2):
            got = json.loads((tmp_path / f"rank{rank}.json").read_text())[protocol]
            for key in ("R@1", "R@5", "R@20", "mR@1", "mR@5", "mR@20", "per_predicate", "num_videos",
                        "num_gt_relations", "missing_predictions", "unmapped_labels", "weak R@5", "pair R@20",
                        "zR@20", "no_graph_constraint", "graph_constraint", "zero_shot"):
                assert got[key] == single[key], (protocol, rank, key)
