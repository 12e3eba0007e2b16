"""500 workers on one study through PgBouncer (transaction pooling), paced like real trials.

Every worker is the real trial loop (``worker.runner.WorkerSession``: ``ask_within_budget`` under
the budget lock, ``record_start``, a ``storage.Heartbeat`` at the study's interval, a report per
epoch, ``record_result``, ``tell``) with its own storage and connection pool, as a ``worker run``
process has; only training is replaced by sleeping ``--trial-s`` seconds in ``--epochs`` steps
(trivial objective). Workers are threads, ``--workers / --processes`` per process, and join
over the first ``--trial-s`` seconds as a team's would, so asks arrive at about
workers / trial-s per second. They reach the database through a throw-away PgBouncer in
transaction mode (bench/_pgbouncer.py) in front of the server of ``BENCH_PG_URL_TEMPLATE``, in
a fresh ``bench_<uuid>`` database dropped at the end.

Measured: budget exact, connection errors (none allowed), deadlocks (``pg_stat_database``); per
trial the budget lock's wait p50/p99 and hold time, database CPU (the server backends of the
bench database, from /proc), PgBouncer CPU, statements (PgBouncer's query count); per worker
the overhead of a trial (its wall time minus the sleep) as a share of ``--trial-s``, and the
worker process CPU per trial; the server's transactions per second.

    flock /tmp/bench.lock python bench/many_workers.py              # 500 workers, 1,500 trials
    python bench/many_workers.py --smoke                             # seconds
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import multiprocessing as mp
import os
from pathlib import Path
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from _pg import BenchError, admin, create_database, drop_database
from _pgbouncer import Bouncer, BouncerError
from _report import write_result  # bench/ is on sys.path when a script runs

SPACE = """\
fixed: {model: multipath, depth: 2, base_filters: 4, conventional_filters: 8, residual_filters: 4,
        multiscale_filters: 8, context_filters: 4, batch_size: 16, epochs: 4}
params:
  learning_rate: {type: float, low: 0.0001, high: 0.01, log: true}
  focal_gamma: {type: float, low: 0.0, high: 5.0}
"""
FINGERPRINT = "0" * 64  # no data is loaded: the trials only sleep


# --------------------------------------------------------------------------- one worker


@dataclasses.dataclass
class PacedResult:
    """Duck-typed ``TrainResult``: what ``contract.report.record_result`` stores."""

    best_miou: float
    per_class_iou: dict[int, float]
    epochs_run: int
    best_epoch: int
    wall_time_s: float
    n_train: int = 48
    n_val: int = 16


def _session_class() -> type:
    from worker.runner import WorkerSession

    class PacedSession(WorkerSession):
        """The real trial loop; training sleeps and reports ``epochs`` made-up mIoUs."""

        trial_s = 60.0
        epochs = 4
        slept = 0.0

        def _train(self, config, on_epoch, on_phase, save_path, device):  # noqa: ANN001, ANN202
            start = time.monotonic()
            on_phase("training")
            for epoch in range(self.epochs):
                nap = time.monotonic()
                time.sleep(self.trial_s / self.epochs)
                self.slept += time.monotonic() - nap
                on_epoch(epoch, 0.1 + 0.01 * epoch)
            return PacedResult(
                0.1 + 0.01 * (self.epochs - 1),
                {c: 0.1 for c in (1, 2, 3, 4)},
                self.epochs,
                self.epochs - 1,
                time.monotonic() - start,
            )

    return PacedSession


def _join(url: str, spec: Any, say: Any) -> Any:
    """What ``worker.joining.join`` does, minus the data file and the device: a ``Joined``."""
    from contract import trial_attrs
    from worker.joining import Joined, WorkerOptions, _SayHandler, open_study
    from worker.study_link import StudyLink
    from worker.training.device import DeviceInfo

    options = WorkerOptions("s", Path("-"), url, verbose=False)
    identity = trial_attrs.worker_identity(None)
    rdb, study = open_study(url, options, spec, f"{identity['pid']}:{threading.get_ident()}", say)
    link = StudyLink(study, rdb, url, spec.grace_period, say)
    return Joined(
        options, say, spec, identity, None, DeviceInfo("CPU", "paced", None, False), {}, link, None, _SayHandler(say)
    )  # the handler is never attached: threads share the logger


def _timed_lock(waits: list[float], holds: list[float]) -> Any:
    """``storage.budget_lock.named_lock``, recording how long each take waited and how long it was held."""
    import contextlib

    from storage.locks import named_lock

    @contextlib.contextmanager
    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.monotonic()
        with named_lock(*args, **kwargs) as held:
            got = time.monotonic()
            waits.append(got - start)
            try:
                yield held
            finally:
                holds.append(time.monotonic() - got)

    return timed


def _process(url: str, n: int, first: int, args: dict[str, Any], start_at: float, queue: Any) -> None:
    """One process with ``n`` worker threads; puts its measurements on ``queue``."""
    import optuna

    from contract.study_spec import StudySpec  # noqa: F401 - imported before the threads race for it
    import storage.budget_lock
    from worker.joining import read_spec

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    waits: list[float] = []
    holds: list[float] = []
    storage.budget_lock.named_lock = _timed_lock(waits, holds)
    spec = read_spec(url, "s")
    Session = _session_class()
    Session.trial_s, Session.epochs = args["trial_s"], args["epochs"]
    lines: list[str] = []
    overheads: list[float] = []
    codes: list[int] = []
    trials_run = [0]
    lock = threading.Lock()

    def say(line: str) -> None:
        if any(word in line for word in ("warning", "unavailable", "retrying", "error", "failed", "dropped")):
            with lock:
                lines.append(line)

    def run(index: int) -> None:
        delay = start_at + (first + index) * args["stagger_s"] / args["workers"] - time.time()
        if delay > 0:
            time.sleep(delay)
        try:
            session = Session(_join(url, spec, say))
            ask_s = [0.0]
            ask, cycle = session.next_trial, session.run_trial

            def next_trial(guard: Any) -> Any:
                began = time.monotonic()
                trial = ask(guard)
                ask_s[0] = time.monotonic() - began
                return trial

            def run_trial(trial: Any, guard: Any) -> Any:
                began, slept = time.monotonic(), session.slept
                outcome = cycle(trial, guard)
                with lock:  # a trial's overhead: asking plus its wall time outside the sleeps
                    overheads.append(ask_s[0] + time.monotonic() - began - (session.slept - slept))
                    trials_run[0] += 1
                return outcome

            session.next_trial, session.run_trial = next_trial, run_trial
            try:
                code = session.loop()
            finally:
                session.close()
        except Exception as exc:  # noqa: BLE001 - reported, counted as a failed worker
            with lock:
                lines.append(f"worker crashed: {type(exc).__name__}: {str(exc)[:200]}")
            code = 99
        with lock:
            codes.append(code)

    cpu0 = time.process_time()
    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    queue.put(
        {
            "waits": waits,
            "holds": holds,
            "overheads": overheads,
            "codes": codes,
            "lines": lines,
            "trials": trials_run[0],
            "cpu_s": time.process_time() - cpu0,
        }
    )


# --------------------------------------------------------------------------- the server side


def _backend_cpu(admin_conn: Any, database: str, seen: dict[int, float]) -> None:
    """Add the CPU seconds of every server backend of ``database`` now to ``seen`` (pid -> s)."""
    tick = os.sysconf("SC_CLK_TCK")
    with admin_conn.cursor() as cur:
        cur.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (database,))
        pids = [row[0] for row in cur.fetchall()]
    for pid in pids:
        cpu = _proc_cpu(pid, tick)
        if cpu is not None:
            seen[pid] = cpu


def _proc_cpu(pid: int, tick: int | None = None) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / (tick or os.sysconf("SC_CLK_TCK"))


def _db_counters(admin_conn: Any, database: str) -> dict[str, int]:
    with admin_conn.cursor() as cur:
        cur.execute(
            "SELECT xact_commit + xact_rollback, deadlocks FROM pg_stat_database WHERE datname = %s", (database,)
        )
        xacts, deadlocks = cur.fetchone()
    return {"xacts": int(xacts), "deadlocks": int(deadlocks)}


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --------------------------------------------------------------------------- the run


def run(args: argparse.Namespace) -> dict[str, Any]:
    from sqlalchemy.engine import make_url

    from contract.study_spec import CreateOptions
    import storage
    from tuner.study import create_study

    name, direct = create_database()
    upstream = make_url(direct)
    conn = admin()
    try:
        storage.init_schema(direct)
        with tempfile.TemporaryDirectory(prefix="nw-many-") as tmp:
            space = Path(tmp) / "space.yaml"
            space.write_text(SPACE.replace("epochs: 4", f"epochs: {args.epochs}"))
            create_study(
                "s",
                CreateOptions(
                    storage_url=direct,
                    data=None,
                    fingerprint=FINGERPRINT,
                    space_path=space,
                    trials=args.trials,
                    sampler=args.sampler,
                    pruner="none",
                    heartbeat_interval=args.heartbeat_interval,
                    grace_period=args.grace_period,
                    seed_config=False,
                ),
            )
        with Bouncer(
            upstream.host or "127.0.0.1",
            upstream.port or 5432,
            pool_size=args.pool_size,
            max_client_conn=4 * args.workers + 100,
        ) as bouncer:
            url = bouncer.url(name)
            load_before = os.getloadavg()
            bouncer_pid = int((bouncer.dir / "pgbouncer.pid").read_text())
            stats0, counters0 = bouncer.stats(name), _db_counters(conn, name)
            bouncer_cpu0 = _proc_cpu(bouncer_pid) or 0.0
            cpu_start: dict[int, float] = {}
            _backend_cpu(conn, name, cpu_start)
            cpu_last = dict(cpu_start)
            ctx = mp.get_context("spawn")
            queue = ctx.Queue()
            start_at = time.time() + 3.0  # every process imported before the first worker joins
            per = [args.workers // args.processes + (i < args.workers % args.processes) for i in range(args.processes)]
            firsts = [sum(per[:i]) for i in range(args.processes)]
            procs = [
                ctx.Process(target=_process, args=(url, n, f, vars(args), start_at, queue))
                for n, f in zip(per, firsts, strict=True)
            ]
            began = time.monotonic()
            for proc in procs:
                proc.start()
            results: list[dict[str, Any]] = []
            peak_clients = peak_servers = 0
            while len(results) < len(procs):
                try:
                    results.append(queue.get(timeout=1.0))
                except Exception:  # noqa: BLE001 - queue.Empty: sample meanwhile
                    pass
                _backend_cpu(conn, name, cpu_last)
                pools = _pools(bouncer, name)
                peak_clients = max(peak_clients, pools.get("clients", 0))
                peak_servers = max(peak_servers, pools.get("servers", 0))
                if len(results) < len(procs) and not any(p.is_alive() for p in procs) and queue.empty():
                    raise BenchError(f"a worker process died: exit codes {[p.exitcode for p in procs]}")
                if time.monotonic() - began > args.timeout_s:
                    raise BenchError(f"timed out after {args.timeout_s:.0f}s")
            for proc in procs:
                proc.join(timeout=30)
            wall = time.time() - start_at
            stats1, counters1 = bouncer.stats(name), _db_counters(conn, name)
            bouncer_cpu = (_proc_cpu(bouncer_pid) or 0.0) - bouncer_cpu0
            load_after = os.getloadavg()
        db_cpu = sum(cpu - cpu_start.get(pid, 0.0) for pid, cpu in cpu_last.items())
        states = _states(direct)
    finally:
        drop_database(name, conn)

    trials = args.trials
    waits = [w for r in results for w in r["waits"]]
    holds = [h for r in results for h in r["holds"]]
    overheads = [o for r in results for o in r["overheads"]]
    codes = [c for r in results for c in r["codes"]]
    lines = [line for r in results for line in r["lines"]]
    queries = stats1.get("total_query_count", 0) - stats0.get("total_query_count", 0)
    xacts = counters1["xacts"] - counters0["xacts"]
    worker_cpu = sum(r["cpu_s"] for r in results)
    finished = states.get("COMPLETE", 0) + states.get("PRUNED", 0)
    result = {
        "benchmark": "many_workers",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(),
        "load_before": load_before,
        "load_after": load_after,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "wall_s": wall,
        "states": states,
        "budget_exact": finished == trials and sum(states.values()) == trials,
        "workers_ok": sum(c == 0 for c in codes),
        "workers": args.workers,
        "connection_errors": [
            line for line in lines if "unavailable" in line or "retrying" in line or "crashed" in line
        ][:20],
        "other_lines": [line for line in lines if "unavailable" not in line and "retrying" not in line][:20],
        "deadlocks": counters1["deadlocks"] - counters0["deadlocks"],
        "lock_wait_p50_ms": 1000 * _pct(waits, 0.50),
        "lock_wait_p99_ms": 1000 * _pct(waits, 0.99),
        "lock_wait_max_ms": 1000 * max(waits, default=float("nan")),
        "lock_hold_p50_ms": 1000 * _pct(holds, 0.50),
        "lock_hold_p99_ms": 1000 * _pct(holds, 0.99),
        "overhead_p50_s": _pct(overheads, 0.50),
        "overhead_p99_s": _pct(overheads, 0.99),
        "overhead_mean_s": statistics.fmean(overheads) if overheads else float("nan"),
        "overhead_p50_pct": 100 * _pct(overheads, 0.50) / args.trial_s,
        "overhead_p99_pct": 100 * _pct(overheads, 0.99) / args.trial_s,
        "worker_cpu_per_trial_ms": 1000 * worker_cpu / max(finished, 1),
        "worker_cpu_per_trial_pct": 100 * worker_cpu / max(finished, 1) / args.trial_s,
        "db_cpu_per_trial_ms": 1000 * db_cpu / max(finished, 1),
        "pgbouncer_cpu_per_trial_ms": 1000 * bouncer_cpu / max(finished, 1),
        "statements_per_trial": queries / max(finished, 1),
        "transactions_per_trial": xacts / max(finished, 1),
        "server_tps": xacts / wall,
        "statements_per_s": queries / wall,
        "peak_client_connections": peak_clients,
        "peak_server_connections": peak_servers,
    }
    return result


def _pools(bouncer: Bouncer, database: str) -> dict[str, int]:
    import psycopg2

    try:
        r = bouncer.show("POOLS", database)
    except psycopg2.Error:
        return {}
    if not r:
        return {}
    clients = int(r["cl_active"]) + int(r["cl_waiting"])
    servers = sum(int(r[k]) for k in ("sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login"))
    return {"clients": clients, "servers": servers}


def _states(url: str) -> dict[str, int]:
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sqlalchemy.text("SELECT state, count(*) FROM trials GROUP BY state")).all()
    finally:
        engine.dispose()
    return {str(state): int(n) for state, n in rows}


def _machine() -> dict[str, Any]:
    model = ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        model = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "")
    except (OSError, subprocess.SubprocessError):
        pass
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(), "host": platform.node()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=500)
    parser.add_argument("--trials", type=int, default=1500)
    parser.add_argument("--trial-s", type=float, default=60.0, help="seconds each trial sleeps")
    parser.add_argument("--epochs", type=int, default=4, help="reports per trial")
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--stagger-s", type=float, default=None, help="workers join over this long (default: trial-s)")
    parser.add_argument("--pool-size", type=int, default=20, help="PgBouncer's server connections")
    parser.add_argument(
        "--sampler", default="random", help="the study's sampler (TPE's own cost: bench/coordination.py)"
    )
    parser.add_argument("--heartbeat-interval", type=int, default=None, help="default: the study default")
    parser.add_argument("--grace-period", type=int, default=None)
    parser.add_argument("--timeout-s", type=float, default=3600.0)
    parser.add_argument("--smoke", action="store_true", help="8 workers, 16 trials of 0.5 s: seconds")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from contract.study_spec import StudySpec

    if args.smoke:
        args.workers, args.trials, args.trial_s, args.epochs, args.processes = 8, 16, 0.5, 2, 2
        args.heartbeat_interval = args.heartbeat_interval or 1
        args.grace_period, args.timeout_s = args.grace_period or 10, 300
    args.stagger_s = args.trial_s if args.stagger_s is None else args.stagger_s
    args.heartbeat_interval = args.heartbeat_interval or StudySpec.heartbeat_interval
    args.grace_period = args.grace_period or StudySpec.grace_period
    try:
        result = run(args)
    except (BenchError, BouncerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for key in (
        "wall_s",
        "budget_exact",
        "states",
        "workers_ok",
        "connection_errors",
        "deadlocks",
        "lock_wait_p50_ms",
        "lock_wait_p99_ms",
        "lock_hold_p50_ms",
        "overhead_p50_pct",
        "overhead_p99_pct",
        "worker_cpu_per_trial_pct",
        "db_cpu_per_trial_ms",
        "pgbouncer_cpu_per_trial_ms",
        "statements_per_trial",
        "server_tps",
        "peak_client_connections",
        "peak_server_connections",
    ):
        value = result[key]
        print(f"{key:28} {value:.3g}" if isinstance(value, float) else f"{key:28} {value}")
    write_result(result, "many_workers", args.out)
    ok = (
        result["budget_exact"]
        and result["workers_ok"] == args.workers
        and not result["connection_errors"]
        and result["deadlocks"] == 0
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
