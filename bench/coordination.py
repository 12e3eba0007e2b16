"""Coordination overhead: what the database costs per trial, for N workers and long studies.

Two questions, answered against the machine's PostgreSQL in a fresh ``bench_<uuid>`` database
that is dropped at the end:

1. **N concurrent workers** (spawned processes, a trivial objective ``x**2 + y``) sharing one
   study with a budget of ``--trials-per-worker`` x N trials: trials/s, ask / suggest / tell
   latency percentiles, per-trial overhead as a share of a one-minute trial, the peak number of
   database connections (``pg_stat_activity``, sampled every 100 ms; also the most any one
   project worker held), and whether exactly the budget was finished. Two arms run the same loop
   side by side, one after the other, for each worker count and each pace:

   * ``project``: exactly what ``worker run`` does around a trial: ``storage.open_storage``
     (one pooled connection, pre-ping, heartbeats), ``worker.budget.ask_within_budget``
     (advisory lock -> adopt beat-less trials -> fail stale trials -> count -> take a slot ->
     release; then the ``optuna.Trial``), a :class:`storage.Heartbeat` around the objective,
     ``study.tell``; a worker stops when the budget says no;
   * ``raw``: ``optuna.create_study(storage=url, load_if_exists=True)``, ``study.ask()``,
     ``study.tell()``, all Optuna defaults; the budget is Optuna's own ``MaxTrialsCallback``
     rule (stop once the study has that many COMPLETE trials), checked before each ask and
     timed as part of it.

   ``--paces``: 0 is the worst case (every worker asks again at once, so N workers keep the
   database and the lock saturated); a pace of P seconds makes each trial also sleep P s, so
   the asks arrive at about N / P per second and the overhead is what one trial pays at that rate.

2. **Ask latency vs history**: one process, studies pre-filled with 100 / 1000 / 5000 finished
   trials, ``--asks`` timed ask+suggest+tell rounds per variant: default TPE (raw and through
   ``ask_within_budget``), TPE without multivariate / constant liar, RandomSampler, default TPE
   through Optuna's gRPC storage proxy, and our one-query ``count_trials`` vs Optuna's
   ``get_n_trials`` (which loads every trial). ``--history ''`` skips it.

"Ask latency" in part 2 is ``ask`` plus the four ``suggest_*`` calls: with Optuna's relative
sampling done lazily at the first ``suggest``, ``ask`` alone would hide the sampler's work. In
part 1 the two are reported apart ("ask" and "sugg").

On a 2-core machine shared with other work, 32 or 64 processes mostly measure CPU contention (the
database, the samplers and the workers share two cores): at pace 0 a trial's overhead is about
N / (trials per second), whatever the code does. The numbers are indicative, not a capacity
figure for a real cluster where workers sit on their own machines.

    python bench/coordination.py                    # default sizes, several minutes
    python bench/coordination.py --workers 32,64 --paces 0,5 --history ''
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

from _pg import admin, create_database, drop_database
from _report import write_result  # bench/ is on sys.path when a script runs
import numpy as np

TRIAL_S = 60.0  # the "one-minute trial" the overhead goal is stated against


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


class ConnectionSampler:
    """Samples the number of sessions on one database every ``interval`` s; keeps the peak.

    It connects to the ``postgres`` maintenance database, so its own session is not counted, and
    it does so when created, before the workers start: they may take every connection the
    server allows.
    """

    def __init__(self, database: str, interval: float = 0.1) -> None:
        self.database, self.interval = database, interval
        self._conn = admin()
        self.samples: list[int] = []
        self.per_worker = 0  # most sessions one project worker held at once (by application_name)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ConnectionSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._conn.close()

    def _run(self) -> None:
        with self._conn.cursor() as cur:
            while not self._stop.is_set():
                cur.execute(
                    "SELECT application_name, count(*) FROM pg_stat_activity WHERE datname = %s "
                    "GROUP BY application_name",
                    (self.database,),
                )
                rows = cur.fetchall()
                self.samples.append(sum(int(n) for _, n in rows))
                named = [int(n) for app, n in rows if app.startswith("mars-tuner-worker@")]
                self.per_worker = max([self.per_worker, *named])
                self._stop.wait(self.interval)

    @property
    def peak(self) -> int:
        return max(self.samples, default=0)


# --------------------------------------------------------------------------- part 1: N workers


def _quiet() -> None:
    import logging

    import optuna

    logging.getLogger("storage").setLevel(logging.ERROR)  # "waiting Ns for the lock" is expected here

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")


def _arm(mode: str, url: str, study_name: str, budget: int, seed: int) -> tuple[Any, Any, Any]:
    """One worker of an arm on ``study_name``: ``(study, ask, run)``.

    ``ask()`` gives a trial, or ``None`` once the arm's budget rule says the study is done;
    ``run(trial)`` is the objective, with what the arm does around it.
    """
    import optuna
    from optuna.trial import TrialState

    if mode == "project":
        from contract.study_spec import StudySpec
        import storage
        from storage.optuna_internals import trial_id
        from worker import budget as shared

        rdb = storage.open_storage(
            url,
            heartbeat_interval=StudySpec.heartbeat_interval,
            grace_period=StudySpec.grace_period,
            max_retry=StudySpec.max_retry,
        )
        study = optuna.load_study(study_name=study_name, storage=rdb, sampler=optuna.samplers.TPESampler(seed=seed))

        def ask():
            return shared.ask_within_budget(study, rdb, url, budget)[0]

        def run(trial):
            with storage.Heartbeat(rdb, trial_id(trial)):
                return objective(trial)

        return study, ask, run
    study = optuna.create_study(study_name=study_name, storage=url, load_if_exists=True)

    def ask_raw():  # MaxTrialsCallback's rule: stop once the study has `budget` COMPLETE trials
        if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) >= budget:
            return None
        return study.ask()

    return study, ask_raw, objective


def _worker(
    mode: str,
    url: str,
    study_name: str,
    budget: int,
    pace_s: float,
    max_s: float,
    index: int,
    barrier: Any,
    results: Any,
) -> None:
    """One worker process: set up, wait for the others, run trials until the budget is spent.

    A failure (e.g. the server refusing a connection past ``max_connections``) is reported, not
    raised, so that the others' numbers still come back and the finding is shown.
    """
    _quiet()
    asks: list[float] = []
    suggests: list[float] = []
    tells: list[float] = []
    overheads: list[float] = []
    error = None
    try:
        study, ask, run = _arm(mode, url, study_name, budget, seed=1000 + index)
        study.trials  # noqa: B018 - warm the connection and the trial cache before the clock starts
    except Exception as exc:  # noqa: BLE001 - reported as this worker's error
        error = f"setup: {_error_line(exc)}"
    barrier.wait()
    deadline = time.perf_counter() + max_s
    try:
        while error is None and time.perf_counter() < deadline:
            t0 = time.perf_counter()
            trial = ask()
            t1 = time.perf_counter()
            if trial is None:
                break
            value = run(trial)
            t2 = time.perf_counter()
            study.tell(trial, value)
            t3 = time.perf_counter()
            asks.append(t1 - t0)
            suggests.append(t2 - t1)
            tells.append(t3 - t2)
            overheads.append(t3 - t0)
            if pace_s:
                time.sleep(pace_s)  # the trial's "training": the database is not involved
    except Exception as exc:  # noqa: BLE001 - reported as this worker's error
        error = f"run: {_error_line(exc)}"
    results.put({"asks": asks, "suggests": suggests, "tells": tells, "overheads": overheads, "error": error})


def _error_line(exc: BaseException) -> str:
    """The error and its root cause in one line (Optuna wraps the server's refusal in its own error)."""
    root = exc
    while (root.__cause__ or root.__context__) is not None:
        root = root.__cause__ or root.__context__  # type: ignore[assignment]
    first = (str(root).strip().splitlines() or [""])[0][:200]
    via = "" if root is exc else f"{type(exc).__name__} <- "
    return f"{via}{type(root).__name__}: {first}"


def run_workers(
    mode: str, url: str, database: str, n_workers: int, budget: int, pace_s: float, max_s: float
) -> dict[str, Any]:
    """``n_workers`` spawned processes on one new study until ``budget`` trials; aggregated numbers."""
    import optuna
    from optuna.trial import TrialState

    study_name = f"{mode}-{n_workers}-{uuid.uuid4().hex[:6]}"
    creator = optuna.storages.RDBStorage(url)
    optuna.create_study(study_name=study_name, storage=creator)
    creator.engine.dispose()
    sampler = ConnectionSampler(database)
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(n_workers + 1)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(mode, url, study_name, budget, pace_s, max_s, i, barrier, results))
        for i in range(n_workers)
    ]
    for p in procs:
        p.start()
    barrier.wait(timeout=600)  # every worker has imported, connected and loaded the study
    with sampler:
        started = time.perf_counter()
        rows = [results.get(timeout=max_s + 300) for _ in procs]
        elapsed = time.perf_counter() - started
    for p in procs:
        p.join(timeout=60)
    errors = sorted({r["error"] for r in rows if r["error"]})
    failed = sum(1 for r in rows if r["error"])
    merged = {
        k: np.concatenate([np.asarray(r[k], dtype=float) for r in rows])
        for k in ("asks", "suggests", "tells", "overheads")
    }
    n = len(merged["asks"])
    overhead_mean = float(merged["overheads"].mean()) if n else math.nan
    reader = optuna.storages.RDBStorage(url)
    finished = len(
        optuna.load_study(study_name=study_name, storage=reader).get_trials(
            deepcopy=False, states=(TrialState.COMPLETE,)
        )
    )
    reader.engine.dispose()
    return {
        "mode": mode,
        "workers": n_workers,
        "pace_s": pace_s,
        "budget": budget,
        "finished": finished,
        "budget_exact": finished == budget,
        "workers_failed": failed,
        "errors": errors,
        "seconds": elapsed,
        "trials": n,
        "trials_per_s": n / elapsed,
        "ask_ms": _percentiles(merged["asks"]),
        "suggest_ms": _percentiles(merged["suggests"]),
        "tell_ms": _percentiles(merged["tells"]),
        "overhead_ms": _percentiles(merged["overheads"]),
        "overhead_pct_of_1min_trial": 100.0 * overhead_mean / TRIAL_S,
        # Worker-seconds per finished trial (N / throughput): the same share, but counting every
        # second a worker spent, including a last ask that waited only to hear "budget spent".
        "worker_s_per_trial_pct_of_1min": 100.0 * n_workers * elapsed / max(n, 1) / TRIAL_S,
        "db_connections_peak": sampler.peak,
        "db_connections_per_worker_peak": sampler.per_worker if mode == "project" else None,
    }


def _percentiles(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {"p50": math.nan, "p95": math.nan, "p99": math.nan, "mean": math.nan}
    ms = np.asarray(values) * 1e3
    return {
        "p50": float(np.percentile(ms, 50)),
        "p95": float(np.percentile(ms, 95)),
        "p99": float(np.percentile(ms, 99)),
        "mean": float(ms.mean()),
    }


# --------------------------------------------------------------------------- part 3: one trial's cost


def _postgres_cpu_s() -> float | None:
    """CPU seconds used so far by this machine's PostgreSQL processes; ``None`` if none is seen."""
    tick, total, seen = os.sysconf("SC_CLK_TCK"), 0.0, False
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        if "(postgres)" in stat:
            fields = stat.rsplit(")", 1)[1].split()
            total, seen = total + (int(fields[11]) + int(fields[12])) / tick, True
    return total if seen else None


def run_cost(url: str, arms: list[str], n_trials: int) -> list[dict[str, Any]]:
    """One worker alone, ``n_trials`` trials in a row per arm: what one trial costs, uncontended.

    Per trial: wall time, the worker's CPU time, the database server's CPU time (its processes
    on this machine, which runs nothing else of the bench meanwhile) and, for the project arm,
    how long the budget lock was held (acquired to released). These say what the pace-0 runs
    measure on a machine of C cores: N workers asking non-stop cost each trial about
    N x (worker + database CPU) / C; and what remains where every worker has its own CPU:
    the lock, which N workers take one after the other (N x hold per round).
    """
    import contextlib

    import optuna

    from worker import budget

    holds: list[float] = []
    plain_lock = budget.budget_lock

    @contextlib.contextmanager
    def timed_lock(*args: Any, **kwargs: Any) -> Any:
        acquired: list[float] = []
        with contextlib.ExitStack() as stack:
            stack.callback(lambda: holds.append(time.perf_counter() - acquired[0]))  # last: after the release
            held = stack.enter_context(plain_lock(*args, **kwargs))
            acquired.append(time.perf_counter())
            yield held

    rows = []
    for mode in arms:
        name = f"cost-{mode}-{uuid.uuid4().hex[:6]}"
        creator = optuna.storages.RDBStorage(url)
        optuna.create_study(study_name=name, storage=creator)
        creator.engine.dispose()
        study, ask, run = _arm(mode, url, name, n_trials + 1, seed=1)

        def one() -> None:
            trial = ask()  # noqa: B023 - called within this iteration
            study.tell(trial, run(trial))  # noqa: B023 - called within this iteration

        holds.clear()
        budget.budget_lock = timed_lock
        try:
            db0, wall0, cpu0 = _postgres_cpu_s(), time.perf_counter(), time.process_time()
            for _ in range(n_trials):
                one()
            db1, wall1, cpu1 = _postgres_cpu_s(), time.perf_counter(), time.process_time()
        finally:
            budget.budget_lock = plain_lock
        rows.append(
            {
                "mode": mode,
                "trials": n_trials,
                "wall_ms": 1e3 * (wall1 - wall0) / n_trials,
                "worker_cpu_ms": 1e3 * (cpu1 - cpu0) / n_trials,
                "db_cpu_ms": None if db0 is None or db1 is None else 1e3 * (db1 - db0) / n_trials,
                "lock_hold_ms": _percentiles(holds) if holds else None,
            }
        )
        print(
            f"  {mode:8} one worker, {n_trials} trials: {rows[-1]['wall_ms']:.1f} ms wall, "
            f"{rows[-1]['worker_cpu_ms']:.1f} ms worker CPU per trial",
            flush=True,
        )
    return rows


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
            trials.append(optuna.trial.create_trial(params=params, distributions=dists, value=float(rng.random())))
        study.add_trials(trials)


def _grpc_proxy(url: str) -> tuple[Any, int]:
    """Optuna's gRPC storage proxy in a thread of this process -> (server, port)."""
    import socket

    from optuna.storages import get_storage

    from storage.optuna_internals import grpc_proxy_server

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = grpc_proxy_server(get_storage(url), "127.0.0.1", port)
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
        study = optuna.load_study(study_name=name, storage=rdb, sampler=optuna.samplers.TPESampler(seed=0))
        return study, lambda: ask_within_budget(study, rdb, url, 10**9)[0]

    return {
        "tpe_default": raw(lambda: optuna.samplers.TPESampler(seed=0)),
        "tpe_default_project_ask": project,
        "tpe_independent_no_liar": raw(
            lambda: optuna.samplers.TPESampler(seed=0, multivariate=False, constant_liar=False)
        ),
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
    return {"history": history, "ask_ms": _percentiles(np.array(ask_s)), "tell_ms": _percentiles(np.array(tell_s))}


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
            study = optuna.load_study(study_name=name, storage=proxy, sampler=optuna.samplers.TPESampler(seed=0))
            out["variants"].setdefault("tpe_default_grpc_proxy", {})[str(size)] = time_asks(study, study.ask, n_asks)
            proxy.close()
            rdb = storage.open_storage(url, heartbeat_interval=None)
            study_id = rdb.get_study_id_from_name(name)
            ours = _time(lambda: count_trials(rdb, name), 5)  # noqa: B023 - called within this iteration
            theirs = _time(lambda: rdb.get_n_trials(study_id), 5)  # noqa: B023 - called within this iteration
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
    print(
        "\nN concurrent workers, trivial objective. Latencies in ms; 'sugg' = the four suggest"
        " calls (+ heartbeat start/stop in the project arm); overhead = ask+sugg+tell per trial"
        " and its share of a 60 s trial; conns = peak sessions on the database (per worker:"
        " the most one project worker held); done = COMPLETE trials / budget; N/tput = worker-seconds"
        " per trial (N x wall time / trials) as a share of a 60 s trial"
    )
    print(
        f"{'arm':8} {'N':>3} {'pace':>5} {'trials/s':>9} {'ask p50':>8} {'ask p95':>8} {'ask p99':>8} "
        f"{'sugg p50':>8} {'tell p50':>8} {'tell p95':>8} {'ovh mean':>9} {'% of 1min':>9} {'N/tput %':>8} "
        f"{'conns':>6} "
        f"{'/worker':>7} {'done':>9} {'failed':>6}"
    )
    for r in result["workers"]:
        per = r["db_connections_per_worker_peak"]
        print(
            f"{r['mode']:8} {r['workers']:>3} {r['pace_s']:>5g} {r['trials_per_s']:>9.1f} "
            f"{r['ask_ms']['p50']:>8.1f} {r['ask_ms']['p95']:>8.1f} {r['ask_ms']['p99']:>8.1f} "
            f"{r['suggest_ms']['p50']:>8.1f} {r['tell_ms']['p50']:>8.1f} "
            f"{r['tell_ms']['p95']:>8.1f} {r['overhead_ms']['mean']:>9.1f} "
            f"{r['overhead_pct_of_1min_trial']:>8.3f}% {r['worker_s_per_trial_pct_of_1min']:>7.3f}% "
            f"{r['db_connections_peak']:>6} "
            f"{'-' if per is None else per:>7} {r['finished']:>4}/{r['budget']:<4} {r['workers_failed']:>6}"
        )
        for error in r["errors"]:
            print(f"    {r['mode']} N={r['workers']} worker error: {error}")
    if result.get("cost"):
        print(
            "\nOne worker alone (uncontended), ms per trial: wall, the worker's CPU, the database server's"
            " CPU, the budget lock's hold (mean / p95)"
        )
        for c in result["cost"]:
            db = "-" if c["db_cpu_ms"] is None else f"{c['db_cpu_ms']:.1f}"
            held = c["lock_hold_ms"]
            hold = "-" if not held else f"{held['mean']:.1f} / {held['p95']:.1f}"
            print(
                f"{c['mode']:8} {c['trials']:>5} trials: wall {c['wall_ms']:.1f}, "
                f"worker CPU {c['worker_cpu_ms']:.1f}, database CPU {db}, lock held {hold}"
            )
    h = result["history"]
    if not h:
        print("\n".join(result["verdict"]))
        return
    sizes = [str(s) for s in h["sizes"]]
    print(
        f"\nask+suggest latency p50 (ms) vs finished trials in the study ({h['asks_per_point']} "
        "asks per point; ratio = largest / smallest)"
    )
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
    for r in result["workers"]:
        if r["mode"] != "project":
            continue
        raw = [
            o
            for o in result["workers"]
            if o["mode"] == "raw" and o["workers"] == r["workers"] and o["pace_s"] == r["pace_s"]
        ]
        beside = f" (raw Optuna: {raw[0]['overhead_pct_of_1min_trial']:.3f}%)" if raw else ""
        ok = r["overhead_pct_of_1min_trial"] < 1.0
        lines.append(
            f"goal overhead < 1% of a 1-min trial, {r['workers']} workers, pace {r['pace_s']:g}s: "
            f"{r['overhead_pct_of_1min_trial']:.3f}%{beside} -> {'met' if ok else 'NOT met'}; "
            f"budget {r['finished']}/{r['budget']} -> {'exact' if r['budget_exact'] else 'NOT exact'}"
        )
    cpus = result["machine"]["cpus"] or 1
    for c in result.get("cost", []):
        if c["db_cpu_ms"] is None:
            continue
        per_trial_s = (c["worker_cpu_ms"] + c["db_cpu_ms"]) / 1e3
        for n in sorted({r["workers"] for r in result["workers"]} or {32, 64}):
            need = n * per_trial_s / (0.01 * TRIAL_S)
            lines.append(
                f"{c['mode']}: {n} workers asking non-stop on one machine need >= {need:.1f} cores "
                f"(workers + database) for < 1% ({1e3 * per_trial_s:.0f} ms CPU per trial); "
                f"this machine has {cpus}"
            )
        if c["lock_hold_ms"]:
            for n in (32, 64):
                pct = 100 * n * c["lock_hold_ms"]["mean"] / 1e3 / TRIAL_S
                lines.append(
                    f"{c['mode']}: budget lock held {c['lock_hold_ms']['mean']:.1f} ms per trial: "
                    f"{n} workers queueing for it once each = {pct:.2f}% of a 1-min trial"
                )
    sizes = [str(s) for s in result["history"].get("sizes", [])]
    for variant, points in result["history"].get("variants", {}).items():
        ratio = points[sizes[-1]]["ask_ms"]["p50"] / points[sizes[0]]["ask_ms"]["p50"]
        lines.append(
            f"goal ask({sizes[-1]}) within 2x of ask({sizes[0]}), {variant}: {ratio:.1f}x -> "
            f"{'met' if ratio <= 2 else 'NOT met'}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,8,32,64", help="comma-separated worker counts")
    parser.add_argument(
        "--paces", default="0,5", help="comma-separated seconds each trial sleeps (0: ask non-stop, the worst case)"
    )
    parser.add_argument(
        "--trials-per-worker", type=int, default=8, help="the study's budget is this times the number of workers"
    )
    parser.add_argument("--max-seconds", type=float, default=300.0, help="a run stops after this long")
    parser.add_argument("--arms", default="project,raw")
    parser.add_argument("--history", default="100,1000,5000", help="finished trials in the study")
    parser.add_argument("--asks", type=int, default=15, help="timed asks per history point")
    parser.add_argument(
        "--cost-trials",
        type=int,
        default=200,
        help="trials of one worker alone per arm, for the cost of one trial (0: skip)",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.smoke:
        args.workers, args.paces, args.trials_per_worker, args.history, args.asks = "1,2", "0", 4, "10,30", 2
        args.cost_trials = min(args.cost_trials, 12)

    worker_counts = [int(v) for v in args.workers.split(",")]
    paces = [float(v) for v in args.paces.split(",")]
    sizes = [int(v) for v in args.history.split(",") if v.strip()]
    arms = [a.strip() for a in args.arms.split(",")]
    _quiet()
    import storage

    try:
        database, url = create_database()
        storage.init_schema(url)  # Optuna's schema, as `tuner create` would make it
    except Exception as exc:  # noqa: BLE001 - one line for the user
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    print(f"database {database} (dropped at the end); load average {os.getloadavg()}", flush=True)
    admin_conn = admin()  # kept for the drop: at the end the workers may have filled the server
    load_start = list(os.getloadavg())
    try:
        cost = run_cost(url, arms, args.cost_trials) if args.cost_trials else []
        rows = []
        for pace in paces:
            for n in worker_counts:
                for arm in arms:
                    row = run_workers(arm, url, database, n, args.trials_per_worker * n, pace, args.max_seconds)
                    print(
                        f"  {arm:8} N={n:<3} pace {pace:g}s: {row['trials_per_s']:.1f} trials/s, "
                        f"{row['finished']}/{row['budget']} finished, {row['db_connections_peak']} connections"
                        + (f", {row['workers_failed']} workers failed" if row["workers_failed"] else ""),
                        flush=True,
                    )
                    rows.append(row)
        history = run_history(url, sizes, args.asks) if sizes else {}
    finally:
        drop_database(database, admin_conn)
    result = {
        "benchmark": "coordination",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_start": load_start,
            "loadavg_end": list(os.getloadavg()),
        },
        "command": " ".join([Path(sys.argv[0]).name] + (sys.argv[1:] if argv is None else argv)),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "workers": rows,
        "history": history,
        "cost": cost,
    }
    result["verdict"] = verdict(result)
    print_tables(result)
    write_result(result, "coordination", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
