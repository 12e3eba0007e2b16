"""Speed at scale: ``tuner status``, ``tuner list`` and ``tuner report`` on a 5,000-trial study.

Builds a study in a fresh ``bench_<uuid>`` PostgreSQL database (dropped at the end unless
``--keep``), the way ``tuner create`` makes it, then fills it with bulk inserts into Optuna's
tables (no training): ``--trials`` finished trials (COMPLETE and PRUNED, ``--epochs`` epoch values
each), a few FAIL and 3 RUNNING trials, with the user attributes a worker writes (config, worker,
provenance, per-class IoU, confusion matrix, phase). Parameters come from the shipped default
search space; the value depends smoothly on learning rate and focal gamma plus noise, so that
importance and slice plots have something to show.

Then each command runs end to end as a user runs it (a new ``python -m tuner`` process: start-up,
imports, queries, rendering), ``--repeat`` times; the table shows the median and the fastest.
For reference, the same study is read once in-process the way Optuna's own readers do
(``get_all_study_summaries``, ``study.get_trials()``), which is what the commands did before.

    python bench/status_speed.py                     # 5,000 trials x 30 epochs
    python bench/status_speed.py --smoke             # seconds
    python bench/status_speed.py --keep --report-out report.html   # keep the DB, keep the report
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
from pathlib import Path
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

from _pg import BenchError, create_database, drop_database
from _report import write_result  # bench/ is on sys.path when a script runs
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
STUDY = "mars-5k"
GOAL_S = 2.0


# --------------------------------------------------------------------------- building the study


def _sample(dist: Any, rng: np.random.Generator) -> Any:
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    if isinstance(dist, FloatDistribution):
        if dist.log:
            return float(math.exp(rng.uniform(math.log(dist.low), math.log(dist.high))))
        return float(rng.uniform(dist.low, dist.high))
    if isinstance(dist, IntDistribution):
        return int(rng.integers(dist.low, dist.high + 1))
    assert isinstance(dist, CategoricalDistribution)
    return dist.choices[int(rng.integers(len(dist.choices)))]


def build_study(url: str, n_finished: int, epochs: int, seed: int = 0) -> dict[str, int]:
    """Create ``STUDY`` and bulk-insert its trials; returns rows inserted per table."""
    from optuna.distributions import distribution_to_json
    from psycopg2.extras import execute_values

    from contract.study_spec import StudySpec
    import storage
    from tuner.study import CreateOptions, create_study

    create_study(
        STUDY,
        CreateOptions(
            storage_url=url,
            data=None,
            fingerprint="0" * 64,
            space_path=None,
            trials=n_finished,
            sampler="tpe",
            pruner="hyperband",
        ),
    )
    rdb = storage.open_storage(url, heartbeat_interval=None, role="coordinator")
    import optuna

    study = optuna.load_study(study_name=STUDY, storage=rdb)
    spec = StudySpec.of(study)
    study_id = rdb.get_study_id_from_name(STUDY)
    dists = spec.space.distributions()
    dist_json = {name: distribution_to_json(d) for name, d in dists.items()}
    rng = np.random.default_rng(seed)

    n_fail = max(1, n_finished // 100)
    n_running = 3
    total = n_finished + n_fail + n_running
    states = np.array(["COMPLETE"] * total, dtype=object)
    pruned = rng.random(n_finished) < 0.4
    states[:n_finished][pruned] = "PRUNED"
    fail_at = rng.choice(n_finished + n_fail, size=n_fail, replace=False)
    order = list(states[:n_finished])
    for i in sorted(fail_at):
        order.insert(int(i), "FAIL")
    states = order + ["RUNNING"] * n_running

    t0 = _dt.datetime(2026, 11, 20, 8, 0, 0)
    workers = [(f"gpu-node-{h:02d}", 1000 + g, g) for h in range(1, 5) for g in range(4)]
    now = _dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None)
    rows: dict[str, list[tuple]] = {k: [] for k in ("trials", "values", "params", "attrs", "steps")}
    heads = []
    for number, state in enumerate(states):
        params = {name: _sample(d, rng) for name, d in dists.items()}
        start = t0 + _dt.timedelta(seconds=30 * number)
        if state == "RUNNING":
            start = now - _dt.timedelta(seconds=float(rng.uniform(30, 900)))
        duration = float(rng.uniform(60, 300))
        complete = None if state == "RUNNING" else start + _dt.timedelta(seconds=duration)
        heads.append((number, study_id, state, start, complete))
        quality = (
            0.72
            - 0.06 * (math.log10(params["learning_rate"]) + 3.4) ** 2
            - 0.015 * abs(params["focal_gamma"] - 1.2)
            + float(rng.normal(0, 0.015))
        )
        n_steps = {"RUNNING": int(rng.integers(1, epochs)), "FAIL": int(rng.integers(0, 3))}.get(state, epochs)
        curve = [quality * (1 - math.exp(-(s + 1) / 6)) + float(rng.normal(0, 0.01)) for s in range(n_steps)]
        if state == "PRUNED":
            curve = [v - 0.08 for v in curve]
        per_class = {"1": quality + 0.08, "2": quality - 0.02, "3": quality + 0.05, "4": quality - 0.11}
        attrs: dict[str, Any] = {
            "config": spec.space.config(params).to_dict(),
            "worker": dict(zip(("host", "pid", "gpu"), workers[number % len(workers)], strict=False)),
            "provenance": {"device": "gpu", "device_name": "NVIDIA H100 80GB HBM3"},
        }
        if state == "RUNNING":
            attrs["phase"] = ("compiling", "training", "evaluating")[number % 3]
        if state == "COMPLETE":
            cm = rng.integers(0, 4000, size=(5, 5)) + np.diag(rng.integers(40_000, 90_000, size=5))
            attrs.update(
                miou=quality,
                per_class_iou=per_class,
                epochs_run=epochs,
                best_epoch=epochs - 2,
                wall_time_s=round(duration, 3),
                n_train=2004,
                n_val=501,
                confusion_matrix=cm.tolist(),
            )
        value = curve[-1] if state == "PRUNED" else quality if state == "COMPLETE" else None
        rows["trials"].append((number, state, value, params, attrs, curve))

    conn = rdb.engine.raw_connection()
    try:
        cur = conn.cursor()
        ids = execute_values(
            cur,
            "INSERT INTO trials (number, study_id, state, datetime_start, "
            "datetime_complete) VALUES %s RETURNING trial_id",
            heads,
            page_size=1000,
            fetch=True,
        )
        values, params_rows, attr_rows, step_rows = [], [], [], []
        for (tid,), (_number, _state, value, params, attrs, curve) in zip(ids, rows["trials"], strict=False):
            if value is not None:
                values.append((tid, 0, value, "FINITE"))
            for name, v in params.items():
                params_rows.append((tid, name, dists[name].to_internal_repr(v), dist_json[name]))
            for key, v in attrs.items():
                attr_rows.append((tid, key, json.dumps(v)))
            for step, v in enumerate(curve, start=1):
                step_rows.append((tid, step, v, "FINITE"))
        execute_values(
            cur, "INSERT INTO trial_values (trial_id, objective, value, value_type) VALUES %s", values, page_size=5000
        )
        execute_values(
            cur,
            "INSERT INTO trial_params (trial_id, param_name, param_value, distribution_json) VALUES %s",
            params_rows,
            page_size=5000,
        )
        execute_values(
            cur, "INSERT INTO trial_user_attributes (trial_id, key, value_json) VALUES %s", attr_rows, page_size=5000
        )
        execute_values(
            cur,
            "INSERT INTO trial_intermediate_values (trial_id, step, intermediate_value, "
            "intermediate_value_type) VALUES %s",
            step_rows,
            page_size=5000,
        )
        cur.execute("ANALYZE")
        conn.commit()
    finally:
        conn.close()
        rdb.engine.dispose()
    return {
        "trials": len(heads),
        "trial_values": len(values),
        "trial_params": len(params_rows),
        "trial_user_attributes": len(attr_rows),
        "trial_intermediate_values": len(step_rows),
    }


# --------------------------------------------------------------------------- timing


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _user_env(root: Path) -> dict[str, str]:
    """The commands' environment, as an installed tool runs: bytecode is cached after the first
    run (a shell with PYTHONDONTWRITEBYTECODE would make every run compile the project anew)."""
    env = dict(os.environ, PYTHONPATH=str(root), COLUMNS="160")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def time_command(args: list[str], url: str, repeat: int, root: Path = ROOT) -> dict[str, Any]:
    """Run ``python -m tuner ARGS --storage URL`` once untimed (bytecode, caches), then ``repeat``
    times: wall seconds, and the CPU seconds of the command's process (user + system; not the
    database server's), which a busy shared machine inflates much less than wall time."""
    env = _user_env(root)
    subprocess.run([sys.executable, "-m", "tuner", *args, "--storage", url], capture_output=True, env=env, cwd=root)
    times, cpu = [], []
    for _ in range(repeat):
        t, c = time.perf_counter(), _children_cpu()
        proc = subprocess.run(
            [sys.executable, "-m", "tuner", *args, "--storage", url], capture_output=True, text=True, env=env, cwd=root
        )
        times.append(time.perf_counter() - t)
        cpu.append(_children_cpu() - c)
        if proc.returncode != 0:
            raise BenchError(f"tuner {' '.join(args)} failed: {proc.stderr.strip()[-500:]}")
    return {
        "command": "tuner " + " ".join(a if "/" not in a else "FILE" for a in args),
        "seconds": times,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "cpu_s": cpu,
        "median_cpu_s": statistics.median(cpu),
        "stdout_tail": proc.stdout[-8000:],
    }


def time_startup(repeat: int) -> float:
    """``python -m tuner --help``: the floor every command pays (interpreter + imports)."""
    env = _user_env(ROOT)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "tuner", "--help"], capture_output=True, env=env, cwd=ROOT, check=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def reference_reads(url: str) -> dict[str, float]:
    """What Optuna's own readers cost on the same study (what the commands did before)."""
    import optuna

    import storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rdb = storage.open_storage(url, heartbeat_interval=None, role="coordinator")
    try:
        t = time.perf_counter()
        optuna.get_all_study_summaries(rdb, include_best_trial=True)
        summaries = time.perf_counter() - t
        t = time.perf_counter()
        optuna.load_study(study_name=STUDY, storage=rdb).get_trials(
            deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)
        )
        running = time.perf_counter() - t
    finally:
        rdb.engine.dispose()
    return {"optuna_get_all_study_summaries_s": summaries, "optuna_get_trials_running_s": running}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=5000, help="finished trials (COMPLETE + PRUNED)")
    parser.add_argument("--epochs", type=int, default=30, help="epoch values per finished trial")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="200 trials x 5 epochs, 1 repeat")
    parser.add_argument("--no-reference", action="store_true", help="skip timing Optuna's own readers")
    parser.add_argument("--keep", action="store_true", help="keep the database (its URL is printed)")
    parser.add_argument("--report-out", type=Path, help="keep the generated report here")
    parser.add_argument("--out", type=Path, help="JSON result path (default bench/results/...)")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout (e.g. `git worktree add /tmp/old COMMIT`): time its status and list too",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.trials, args.epochs, args.repeat = 200, 5, 1

    try:
        db, url = create_database()
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    report_path = args.report_out or Path(f"/tmp/{db}-report.html")
    try:
        t = time.perf_counter()
        inserted = build_study(url, args.trials, args.epochs)
        build_s = time.perf_counter() - t
        print(f"built {STUDY}: {inserted} in {build_s:.1f}s")
        startup = time_startup(args.repeat)
        rows = [
            time_command(["status", STUDY], url, args.repeat),
            time_command(["list"], url, args.repeat),
            time_command(["report", STUDY, "-o", str(report_path)], url, args.repeat),
        ]
        baseline = (
            []
            if args.baseline is None
            else [
                {**time_command(cmd, url, args.repeat, root=args.baseline.resolve()), "tree": str(args.baseline)}
                for cmd in (["status", STUDY], ["list"], ["report", STUDY, "-o", str(report_path) + ".baseline"])
                if cmd[0] != "report" or (args.baseline / "tuner" / "report.py").exists()  # older trees had none
            ]
        )
        reference = {} if args.no_reference else reference_reads(url)
        report_bytes = report_path.stat().st_size
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"kept database: {url}")
        else:
            drop_database(db)
        Path(str(report_path) + ".baseline").unlink(missing_ok=True)
        if args.report_out is None and report_path.exists():
            report_path.unlink()

    print(
        f"\n{args.trials} finished trials x {args.epochs} epochs; `tuner --help` start-up "
        f"{startup:.2f}s; load average {os.getloadavg()[0]:.2f}"
    )
    print("| command | wall median s | wall min s | CPU median s | goal < 2 s (wall median) |")
    print("| --- | ---: | ---: | ---: | --- |")
    for row in rows:
        ok = "met" if row["median_s"] < GOAL_S else "NOT met"
        print(f"| `{row['command']}` | {row['median_s']:.2f} | {row['min_s']:.2f} | {row['median_cpu_s']:.2f} | {ok} |")
    for row in baseline:
        print(
            f"| `{row['command']}` ({row['tree']}) | {row['median_s']:.2f} | {row['min_s']:.2f} | "
            f"{row['median_cpu_s']:.2f} | baseline |"
        )
    for key, value in reference.items():
        print(f"reference: {key} = {value:.2f}s")
    print(f"report: {report_bytes / 1e6:.1f} MB")
    write_result(
        {
            "benchmark": "status_speed",
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_avg": os.getloadavg()},
            "trials": args.trials,
            "epochs": args.epochs,
            "repeat": args.repeat,
            "inserted": inserted,
            "build_s": build_s,
            "startup_s": startup,
            "commands": rows,
            "baseline": baseline,
            "reference": reference,
            "report_bytes": report_bytes,
            "goal_s": GOAL_S,
        },
        "status_speed",
        args.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
