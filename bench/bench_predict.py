"""Prediction speed and memory: ``psg4d experiment predict`` (see psg4d.experiments.predict_speed).

    python bench/bench_predict.py [--ckpt CKPT --data DIR] [--videos 20] [--quick] [--out runs/experiments/predict]
"""

from __future__ import annotations

import sys

from psg4d.cli import main

if __name__ == "__main__":
    sys.exit(main(["experiment", "predict", *sys.argv[1:]]))
