"""Coordination overhead: what the database costs per trial, for N workers and long studies.

Two questions, answered against the machine's PostgreSQL in a fresh ``bench_<uuid>`` database
that is dropped at the end:

1. **N concurrent workers** (spawned processes, a trivial objective ``x**2 + y``): trials/s, ask /
   suggest / tell latency percentiles, per-trial overhead as a share of a one-minute trial, and the
   peak number of database connections the workers hold (``pg_stat_activity``, sampled every
   100 ms). Two arms run the same loop:

   * ``project``: exactly what ``worker run`` does around a trial: ``storage.open_storage``
     (small pool, pre-ping, heartbeats), ``worker.budget.ask_within_budget`` (advisory lock ->
     fail stale trials -> count -> ask), a :class:`storage.Heartbeat` around the objective,
     ``study.tell``;
   * ``raw``: ``optuna.create_study(storage=url, load_if_exists=True)``, ``study.ask()``,
     ``study.tell()``, all Optuna defaults.

2. **Ask latency vs history**: one process, studies pre-filled with 100 / 1000 / 5000 finished
   trials, ``--asks`` timed ask+suggest+tell rounds per variant: default TPE (raw and through
   ``ask_within_budget``), TPE without multivariate / constant liar, RandomSampler, default TPE
   through Optuna's gRPC storage proxy, and our one-query ``count_trials`` vs Optuna's
   ``get_n_trials`` (which loads every trial).

"Ask latency" is ``ask`` plus the four ``suggest_*`` calls: with Optuna's independent sampling
the sampler does its work inside ``suggest``, so ``ask`` alone would hide it.

On a 2-core machine shared with other work, 16 processes mostly measure CPU contention (the
database, the sampler and the workers share two cores); the numbers are indicative, not a
capacity figure for a real cluster where workers sit on their own machines.

    python bench/coordination.py                    # default sizes, a few minutes
    python bench/coordination.py --smoke            # seconds
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
import multiprocessing as mp
import os
from pathlib import Path
import platform
import sys
import threading
import time
from typing import Any
import uuid
import warnings

from _report import write_result  # bench/ is on sys.path when a script runs
import numpy as np

ADMIN_DSN = os.environ.get("BENCH_PG_ADMIN_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")
URL_TEMPLATE = os.environ.get("BENCH_PG_URL_TEMPLATE", "postgresql+psycopg2://postgres@127.0.0.1:5432/{db}")
TRIAL_S = 60.0  # the "one-minute trial" the overhead goal is stated against


class BenchError(RuntimeError):
    """The benchmark cannot run (e.g. PostgreSQL unreachable); one line for the user."""


# --------------------------------------------------------------------------- the trial


def objective(trial: Any) -> float:
    """Four suggestions of the kinds a real search space has; the value costs nothing."""
    lr = trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True)
    gamma = trial.suggest_float("focal_gamma", 0.0, 5.0)
    filters = trial.suggest_int("base_filters", 8, 64, step=8)
    batch = trial.suggest_categorical("batch_size", [32, 64, 128])
    return (math.log10(lr) + 3) ** 2 + (gamma - 1) ** 2 + filters / 64 + batch / 128


def _distributions() -> dict[str, Any]:
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    return {
        "learning_rate": FloatDistribution(1e-4, 1e-2, log=True),
        "focal_gamma": FloatDistribution(0.0, 5.0),
        "base_filters": IntDistribution(8, 64, step=8),
        "batch_size": CategoricalDistribution([32, 64, 128]),
    }


# --------------------------------------------------------------------------- database


def _admin():
    import psycopg2

    try:
        conn = psycopg2.connect(ADMIN_DSN, connect_timeout=5)
    except psycopg2.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BenchError(f"PostgreSQL not reachable ({first}); set BENCH_PG_ADMIN_DSN") from None
    conn.autocommit = True
    return conn


def create_database() -> tuple[str, str]:
    """A fresh database with Optuna's schema -> (name, url)."""
    import storage

    name = f"bench_{uuid.uuid4().hex[:12]}"
    conn = _admin()
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    url = URL_TEMPLATE.format(db=name)
    storage.init_schema(url)
    return name, url


def drop_database(name: str) -> None:
    conn = _admin()
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()


class ConnectionSampler:
    """Samples the number of sessions on one database every ``interval`` s; keeps the peak.

    It connects to the ``postgres`` maintenance database, so its own session is not counted.
    """

    def __init__(self, database: str, interval: float = 0.1) -> None:
        self.database, self.interval = database, interval
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ConnectionSampler:
        self._conn = _admin()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._conn.close()

    def _run(self) -> None:
        with self._conn.cursor() as cur:
            while not self._stop.is_set():
                cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (self.database,))
                self.samples.append(int(cur.fetchone()[0]))
                self._stop.wait(self.interval)

    @property
    def peak(self) -> int:
        return max(self.samples, default=0)


# --------------------------------------------------------------------------- part 1: N workers


def _quiet() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")


def _worker(mode: str, url: str, study_name: str, seconds: float, index: int,
            barrier: Any, results: Any) -> None:
    """One worker process: set up, wait for the others, run trials until the deadline."""
    import optuna

    _quiet()
    if mode == "project":
        from contract.study_spec import StudySpec
        import storage
        from worker.budget import ask_within_budget

        rdb = storage.open_storage(
            url, heartbeat_interval=StudySpec.heartbeat_interval, grace_period=StudySpec.grace_period,
            max_retry=StudySpec.max_retry,
        )
        study = optuna.load_study(study_name=study_name, storage=rdb,
                                  sampler=optuna.samplers.TPESampler(seed=1000 + index))

        def ask():
            trial, _ = ask_within_budget(study, rdb, url, 10**9)
            return trial

        def run(trial):
            with storage.Heartbeat(rdb, trial._trial_id):
                return objective(trial)
    else:
        study = optuna.create_study(study_name=study_name, storage=url, load_if_exists=True)
        ask = study.ask

        def run(trial):
            return objective(trial)

    study.trials  # noqa: B018 - warm the connection and the trial cache before the clock starts
    barrier.wait()
    asks, suggests, tells, overheads = [], [], [], []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        trial = ask()
        t1 = time.perf_counter()
        value = run(trial)
        t2 = time.perf_counter()
        study.tell(trial, value)
        t3 = time.perf_counter()
        asks.append(t1 - t0)
        suggests.append(t2 - t1)
        tells.append(t3 - t2)
        overheads.append(t3 - t0)
    results.put({"asks": asks, "suggests": suggests, "tells": tells, "overheads": overheads})


def run_workers(mode: str, url: str, database: str, n_workers: int, seconds: float) -> dict[str, Any]:
    """``n_workers`` spawned processes on one new study for ``seconds``; aggregated numbers."""
    import optuna

    study_name = f"{mode}-{n_workers}-{uuid.uuid4().hex[:6]}"
    optuna.create_study(study_name=study_name, storage=url)
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(n_workers + 1)
    results = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(mode, url, study_name, seconds, i, barrier, results))
             for i in range(n_workers)]
    for p in procs:
        p.start()
    barrier.wait(timeout=300)  # every worker has imported, connected and loaded the study
    with ConnectionSampler(database) as sampler:
        started = time.perf_counter()
        rows = [results.get(timeout=seconds + 300) for _ in procs]
        elapsed = time.perf_counter() - started
    for p in procs:
        p.join(timeout=60)
        if p.exitcode != 0:
            raise BenchError(f"a {mode} worker exited with code {p.exitcode}")
    merged = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
    n = len(merged["asks"])
    overhead_mean = float(merged["overheads"].mean()) if n else math.nan
    return {
        "mode": mode,
        "workers": n_workers,
        "seconds": elapsed,
        "trials": n,
        "trials_per_s": n / elapsed,
        "ask_ms": _percentiles(merged["asks"]),
        "suggest_ms": _percentiles(merged["suggests"]),
        "tell_ms": _percentiles(merged["tells"]),
        "overhead_ms": _percentiles(merged["overheads"]),
        "overhead_pct_of_1min_trial": 100.0 * overhead_mean / TRIAL_S,
        "db_connections_peak": sampler.peak,
    }


def _percentiles(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {"p50": math.nan, "p95": math.nan, "p99": math.nan, "mean": math.nan}
    ms = np.asarray(values) * 1e3
    return {"p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)),
            "p99": float(np.percentile(ms, 99)), "mean": float(ms.mean())}


# --------------------------------------------------------------------------- part 2: history


def fill(study: Any, n: int, seed: int, batch: int = 500) -> None:
    """Add ``n`` finished trials with random parameters (``add_trials`` in batches)."""
    import optuna

    rng = np.random.default_rng(seed)
    dists = _distributions()
    for start in range(0, n, batch):
        trials = []
        for _ in range(min(batch, n - start)):
            params = {
                "learning_rate": float(10 ** rng.uniform(-4, -2)),
                "focal_gamma": float(rng.uniform(0, 5)),
                "base_filters": int(rng.integers(1, 9) * 8),
                "batch_size": int(rng.choice([32, 64, 128])),
            }
            trials.append(optuna.trial.create_trial(params=params, distributions=dists,
                                                    value=float(rng.random())))
        study.add_trials(trials)


def _grpc_proxy(url: str) -> tuple[Any, int]:
    """Optuna's gRPC storage proxy in a thread of this process -> (server, port)."""
    import socket

    from optuna.storages import get_storage
    from optuna.storages._grpc.server import make_server

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = make_server(get_storage(url), "127.0.0.1", port)
    server.start()
    return server, port


def history_variants(url: str) -> dict[str, Any]:
    """name -> factory(study_name) -> (study, ask_callable)."""
    import optuna

    import storage
    from worker.budget import ask_within_budget

    def raw(sampler_factory):
        def make(name):
            study = optuna.load_study(study_name=name, storage=url, sampler=sampler_factory())
            return study, study.ask
        return make

    def project(name):
        rdb = storage.open_storage(url)
        study = optuna.load_study(study_name=name, storage=rdb,
                                  sampler=optuna.samplers.TPESampler(seed=0))
        return study, lambda: ask_within_budget(study, rdb, url, 10**9)[0]

    return {
        "tpe_default": raw(lambda: optuna.samplers.TPESampler(seed=0)),
        "tpe_default_project_ask": project,
        "tpe_independent_no_liar": raw(lambda: optuna.samplers.TPESampler(
            seed=0, multivariate=False, constant_liar=False)),
        "random": raw(lambda: optuna.samplers.RandomSampler(seed=0)),
    }


def time_asks(study: Any, ask: Any, n_asks: int) -> dict[str, Any]:
    trial = ask()  # untimed: the first ask pays one-off imports and loads the trial cache
    study.tell(trial, objective(trial))
    history = len(study.get_trials(deepcopy=False)) - 1
    ask_s, tell_s = [], []
    for _ in range(n_asks):
        t0 = time.perf_counter()
        trial = ask()
        value = objective(trial)
        t1 = time.perf_counter()
        study.tell(trial, value)
        ask_s.append(t1 - t0)
        tell_s.append(time.perf_counter() - t1)
    return {"history": history, "ask_ms": _percentiles(np.array(ask_s)),
            "tell_ms": _percentiles(np.array(tell_s))}


def run_history(url: str, sizes: list[int], n_asks: int) -> dict[str, Any]:
    """Per history size: ask(+suggest)/tell latency of each variant, and count-query cost."""
    import optuna
    from optuna.storages import GrpcStorageProxy

    import storage
    from storage.counts import count_trials

    out: dict[str, Any] = {"sizes": sizes, "asks_per_point": n_asks, "variants": {}, "count_ms": {}}
    variants = history_variants(url)
    server, port = _grpc_proxy(url)
    try:
        for size in sizes:
            name = f"history-{size}-{uuid.uuid4().hex[:6]}"
            optuna.create_study(study_name=name, storage=url)
            fill(optuna.load_study(study_name=name, storage=url), size, seed=size)
            for variant, make in variants.items():
                study, ask = make(name)
                out["variants"].setdefault(variant, {})[str(size)] = time_asks(study, ask, n_asks)
            proxy = GrpcStorageProxy(host="127.0.0.1", port=port)
            study = optuna.load_study(study_name=name, storage=proxy,
                                      sampler=optuna.samplers.TPESampler(seed=0))
            out["variants"].setdefault("tpe_default_grpc_proxy", {})[str(size)] = \
                time_asks(study, study.ask, n_asks)
            proxy.close()
            rdb = storage.open_storage(url, heartbeat_interval=None)
            study_id = rdb.get_study_id_from_name(name)
            ours = _time(lambda: count_trials(rdb, name), 5)
            theirs = _time(lambda: rdb.get_n_trials(study_id), 5)
            out["count_ms"][str(size)] = {"count_trials": ours, "rdb_get_n_trials": theirs}
            rdb.engine.dispose()
    finally:
        server.stop(grace=None)
    return out


def _time(call: Any, repeat: int) -> float:
    call()
    t = time.perf_counter()
    for _ in range(repeat):
        call()
    return (time.perf_counter() - t) / repeat * 1e3


# --------------------------------------------------------------------------- report


def print_tables(result: dict[str, Any]) -> None:
    print("\nN concurrent workers, trivial objective. Latencies in ms; 'sugg' = the four suggest"
          " calls (+ heartbeat start/stop in the project arm); overhead = ask+sugg+tell per trial"
          " and its share of a 60 s trial; conns = peak sessions on the database")
    print(f"{'arm':8} {'N':>3} {'trials/s':>9} {'ask p50':>8} {'ask p95':>8} {'ask p99':>8} "
          f"{'sugg p50':>8} {'tell p50':>8} {'tell p95':>8} {'ovh mean':>9} {'% of 1min':>9} {'conns':>6}")
    for r in result["workers"]:
        print(f"{r['mode']:8} {r['workers']:>3} {r['trials_per_s']:>9.1f} {r['ask_ms']['p50']:>8.1f} "
              f"{r['ask_ms']['p95']:>8.1f} {r['ask_ms']['p99']:>8.1f} {r['suggest_ms']['p50']:>8.1f} "
              f"{r['tell_ms']['p50']:>8.1f} "
              f"{r['tell_ms']['p95']:>8.1f} {r['overhead_ms']['mean']:>9.1f} "
              f"{r['overhead_pct_of_1min_trial']:>8.3f}% {r['db_connections_peak']:>6}")
    h = result["history"]
    sizes = [str(s) for s in h["sizes"]]
    print(f"\nask+suggest latency p50 (ms) vs finished trials in the study ({h['asks_per_point']} "
          "asks per point; ratio = largest / smallest)")
    print(f"{'variant':28} " + " ".join(f"{s:>8}" for s in sizes) + f" {'ratio':>7}")
    for variant, points in h["variants"].items():
        p50 = [points[s]["ask_ms"]["p50"] for s in sizes]
        print(f"{variant:28} " + " ".join(f"{v:>8.1f}" for v in p50) + f" {p50[-1] / p50[0]:>6.1f}x")
    print(f"{'count_trials (ours)':28} " + " ".join(f"{h['count_ms'][s]['count_trials']:>8.2f}" for s in sizes))
    print(f"{'RDBStorage.get_n_trials':28} " + " ".join(f"{h['count_ms'][s]['rdb_get_n_trials']:>8.2f}" for s in sizes))
    for line in result["verdict"]:
        print(line)


def verdict(result: dict[str, Any]) -> list[str]:
    lines = []
    project = [r for r in result["workers"] if r["mode"] == "project"]
    if project:
        top = max(project, key=lambda r: r["workers"])
        ok = top["overhead_pct_of_1min_trial"] < 1.0
        lines.append(f"goal overhead < 1% of a 1-min trial at {top['workers']} workers: "
                     f"{top['overhead_pct_of_1min_trial']:.3f}% -> {'met' if ok else 'NOT met'}")
    sizes = [str(s) for s in result["history"]["sizes"]]
    for variant, points in result["history"]["variants"].items():
        ratio = points[sizes[-1]]["ask_ms"]["p50"] / points[sizes[0]]["ask_ms"]["p50"]
        lines.append(f"goal ask({sizes[-1]}) within 2x of ask({sizes[0]}), {variant}: {ratio:.1f}x -> "
                     f"{'met' if ratio <= 2 else 'NOT met'}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,4,8,16", help="comma-separated worker counts")
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds per run")
    parser.add_argument("--arms", default="project,raw")
    parser.add_argument("--history", default="100,1000,5000", help="finished trials in the study")
    parser.add_argument("--asks", type=int, default=15, help="timed asks per history point")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.smoke:
        args.workers, args.seconds, args.history, args.asks = "1,2", 1.5, "10,30", 2

    worker_counts = [int(v) for v in args.workers.split(",")]
    sizes = [int(v) for v in args.history.split(",")]
    arms = [a.strip() for a in args.arms.split(",")]
    _quiet()
    try:
        database, url = create_database()
    except Exception as exc:  # noqa: BLE001 - one line for the user
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    print(f"database {database} (dropped at the end)", flush=True)
    try:
        rows = []
        for n in worker_counts:
            for arm in arms:
                row = run_workers(arm, url, database, n, args.seconds)
                print(f"  {arm:8} N={n:<3} {row['trials_per_s']:.1f} trials/s, "
                      f"{row['db_connections_peak']} connections", flush=True)
                rows.append(row)
        history = run_history(url, sizes, args.asks)
    finally:
        drop_database(database)
    result = {
        "benchmark": "coordination",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "command": " ".join([Path(sys.argv[0]).name] + (sys.argv[1:] if argv is None else argv)),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "workers": rows,
        "history": history,
    }
    result["verdict"] = verdict(result)
    print_tables(result)
    write_result(result, "coordination", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
