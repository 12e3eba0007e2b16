"""The benchmark scripts run end to end in their smoke mode and write well-formed JSON.

Benchmarks are not part of the test suite; these tests only guard against the scripts rotting
(an import moved, a storage call changed). Each runs as the user runs it: a subprocess.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
import subprocess
import sys

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(script: str, out: Path, timeout: float) -> dict:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--smoke", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.exists(), "no JSON written"
    assert f"results: {out}" in proc.stdout
    return json.loads(out.read_text())


def _positive(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_train_throughput_smoke(tmp_path):
    result = _run("train_throughput.py", tmp_path / "tp.json", timeout=240)
    assert result["benchmark"] == "train_throughput"
    rows = result["rows"]
    assert {r["variant"] for r in rows} == {"baseline", "pipeline", "pipeline_xla"}
    for row in rows:
        for key in ("images_per_s", "step_ms", "cached_step_ms", "timed_s", "warmup_s", "ratio_vs_baseline"):
            assert _positive(row[key]), (row["variant"], key, row[key])
        assert 0.0 <= row["input_wait_share"] <= 1.0
        assert row["images_per_epoch"] == 4 * result["images"]
    baseline = next(r for r in rows if r["variant"] == "baseline")
    assert baseline["ratio_vs_baseline"] == pytest.approx(1.0)
    # Keras drops XLA under op determinism; the benchmark must report that, not hide it.
    by = {r["variant"]: r for r in rows}
    assert by["pipeline"]["op_determinism"] and not by["pipeline"]["xla_active"]
    # jit_compile=True really compiles with XLA (train() turns op determinism off for it).
    assert by["pipeline_xla"]["xla_active"] and not by["pipeline_xla"]["op_determinism"]
    assert result["verdict"] and all("goal" in line for line in result["verdict"])


def test_coordination_smoke(tmp_path):
    result = _run("coordination.py", tmp_path / "coord.json", timeout=180)
    assert result["benchmark"] == "coordination"
    workers = result["workers"]
    assert {(r["mode"], r["workers"]) for r in workers} == {
        ("project", 1), ("raw", 1), ("project", 2), ("raw", 2)}
    for row in workers:
        assert row["trials"] > 0 and _positive(row["trials_per_s"])
        for key in ("ask_ms", "tell_ms", "overhead_ms"):
            p = row[key]
            assert _positive(p["p50"]) and p["p50"] <= p["p95"] <= p["p99"]
        # A worker holds at least one connection while it runs; the sampler saw them.
        assert row["db_connections_peak"] >= row["workers"]
        assert _positive(row["overhead_pct_of_1min_trial"])
    history = result["history"]
    sizes = [str(s) for s in history["sizes"]]
    assert set(history["variants"]) >= {"tpe_default", "tpe_default_project_ask", "random",
                                        "tpe_default_grpc_proxy"}
    for points in history["variants"].values():
        for size in sizes:
            assert points[size]["history"] >= int(size)
            assert _positive(points[size]["ask_ms"]["p50"])
    for size in sizes:
        assert _positive(history["count_ms"][size]["count_trials"])
        assert _positive(history["count_ms"][size]["rdb_get_n_trials"])


def test_pruning_smoke(tmp_path):
    result = _run("pruning.py", tmp_path / "pruning.json", timeout=180)
    assert result["benchmark"] == "pruning"
    arms = {a["arm"]: a for a in result["arms"]}
    assert set(arms) == {"none", "hyperband"}
    for arm in arms.values():
        assert arm["n_trials"] == result["n_trials"] == len(arm["trials"])
        assert 0 < arm["total_epochs"] <= result["n_trials"] * result["epochs"]
        assert arm["total_epochs"] == sum(t["epochs"] for t in arm["trials"])
        assert _positive(arm["seconds"])
        if arm["best_miou"] is not None:
            assert 0.0 <= arm["best_miou"] <= 1.0
    # Without pruning every trial runs every epoch.
    assert arms["none"]["total_epochs"] == result["n_trials"] * result["epochs"]
    # The same seeded start-up trials in both arms: identical parameters.
    assert [t["params"] for t in arms["none"]["trials"]] == [t["params"] for t in arms["hyperband"]["trials"]]


def test_trial_overhead_smoke(tmp_path):
    result = _run("trial_overhead.py", tmp_path / "overhead.json", timeout=900)
    assert result["benchmark"] == "trial_overhead"
    arms = {arm["arm"]: arm for arm in result["arms"]}
    assert {"old", "new"} <= set(arms)
    for arm in arms.values():
        assert len(arm["rows"]) == 4
        for row in arm["rows"]:
            for key in ("ask_to_first_batch_s", "median_epoch_s", "evaluate_s", "wall_s"):
                assert _positive(row[key]), (arm["arm"], key, row[key])
            assert 0.0 <= row["fixed_share"] < 1.0
    assert [r["reused_model"] for r in arms["old"]["rows"]] == [False] * 4
    # new: the 2nd and 3rd trials reuse the first's model; the 4th has another width
    assert [r["reused_model"] for r in arms["new"]["rows"]] == [False, True, True, False]
    assert arms["new"]["retracing_warnings"] == 0
    assert result["verdict"] and any("goal" in line for line in result["verdict"])


def test_gpu_bench_smoke_on_cpu(tmp_path):
    pytest.importorskip("jax")
    import os

    env = dict(os.environ, KERAS_BACKEND="jax", TUNER_COMPILE_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--smoke",
                           "--out-dir", str(tmp_path / "out")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [r["reused_model"] for r in summary["sequence"]] == [False, True]
    assert "rows" in summary["restart"], summary["restart"]
    (row,) = summary["throughput"]
    assert _positive(row["worker_img_s"]) and _positive(row["plain_img_s"])
