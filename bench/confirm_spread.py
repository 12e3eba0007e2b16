"""Seed spread of the best configurations on the real AI4Mars tiles: does the single-run winner stay first?

Each trial is one training run with one seed (validation split and initialisation), so the best
of a search is partly luck. This runs the product as a user does, on a subsample of the real file:

1. ``--images`` tiles of ``real_mars.npz`` (a seeded, big-rock-stratified subset, the same for
   every trial; written to a temporary ``.npz``, never kept) and a small Multipath UNet space
   (``--epochs`` per trial, no pruning);
2. ``tuner create`` (``--trials`` search trials) and ``--workers`` ``worker run`` processes on a
   throw-away SQLite database (or ``--storage URL``), until the search budget is spent;
3. ``tuner confirm --top K --seeds S`` and the same workers' command again;
4. the summary ``tuner status`` shows: per confirmed configuration its search run, n, mean,
   sample sd, min and mean - SE of mIoU over the confirmation seeds; the configurations ranked
   by their single search run, by the confirmed mean, and by mean - SE (``--pick confirmed``).

    flock /tmp/bench.lock nice -n 5 .venv/bin/python bench/confirm_spread.py   # ~15 min, 2 loaded cores
    .venv/bin/python bench/confirm_spread.py --smoke                          # ~3 min
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
from pathlib import Path
import platform
import subprocess
import sys
import tempfile
import time
from typing import Any

from _real import CPU_PARAMS, real_data_path  # bench/ is on sys.path when a script runs
from _report import write_result

BIN = Path(sys.executable).parent
STUDY = "confirm-spread"


def space(epochs: int) -> dict[str, Any]:
    """A small search space over the Multipath UNet, sized for 2 CPU cores (as search_quality.py)."""
    return {
        "fixed": {
            "model": "multipath",
            "epochs": epochs,
            "batch_size": 16,
            "validation_fraction": 0.25,
            "augment_flips": False,
            "early_stopping_patience": epochs,
            "reduce_lr_patience": epochs,
            "residual_filters": 8,
            "context_filters": 8,
            "batchnorm_momentum": 0.9,
            "seed": 0,
        },
        "params": CPU_PARAMS,
    }


def subsample(source: Path, images: int, out: Path) -> int:
    """Write ``images`` tiles of ``source`` (seed 0, stratified on big rock, groups kept) to ``out``."""
    import numpy as np

    from contract.splitting import subset_indices

    with np.load(source) as npz:
        train = npz["training_set"]
        groups = npz["groups"] if "groups" in npz.files else None
    chosen = subset_indices(train[:, 1].astype(np.uint8), images, 0)
    arrays = {"training_set": train[chosen]}
    if groups is not None:
        arrays["groups"] = groups[chosen]
    np.savez_compressed(out, **arrays)
    return len(chosen)


def cli(tool: str, *args: str, env: dict[str, str]) -> str:
    proc = subprocess.run([str(BIN / tool), *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{tool} {' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc.stdout


def run_workers(n: int, data: Path, env: dict[str, str]) -> float:
    """``n`` ``worker run`` processes until the study's queue and budget are spent; wall seconds."""
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            [str(BIN / "worker"), "run", "--study", STUDY, "--data", str(data), "--quiet"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for _ in range(n)
    ]
    outputs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit("a worker failed:\n" + "\n".join(o[-2000:] for o in outputs))
    return time.perf_counter() - started


def ranks(rows: list[dict[str, Any]], key: str) -> list[int]:
    """Trial numbers by ``key``, best first (ties: the lower trial number)."""
    return [r["trial"] for r in sorted(rows, key=lambda r: (-(r[key] if r[key] is not None else -1.0), r["trial"]))]


def summarise(url: str) -> dict[str, Any]:
    """What ``tuner status`` reads: the confirmed configurations and the trials' sizes."""
    from contract import trial_attrs
    from storage.summaries import find_study, open_reader
    from storage.trial_reader import load_trials
    from tuner.confirm import read_confirmed

    engine = open_reader(url)
    try:
        head = find_study(engine, STUDY)
        assert head is not None
        confirmed = read_confirmed(engine, head.study_id)
        trials = load_trials(
            engine,
            head.study_id,
            intermediate=False,
            user_attr_keys=(trial_attrs.N_TRAIN, trial_attrs.N_VAL, trial_attrs.WALL_TIME_S, trial_attrs.CONFIRMS),
        )
    finally:
        engine.dispose()
    rows = [
        {
            "trial": c.number,
            "search_miou": c.search_miou,
            "n": c.n,
            "seeds": list(c.seeds),
            "mious": list(c.mious),
            "mean": c.mean,
            "sd": c.sd,
            "min": c.minimum,
            "mean_minus_se": c.score,
            "per_class_iou_mean": c.per_class_iou,
            "failed": c.failed,
        }
        for c in confirmed
    ]
    search = [t for t in trials if trial_attrs.CONFIRMS not in t.user_attrs]
    return {
        "configurations": rows,
        "by_search_run": ranks(rows, "search_miou"),
        "by_mean": ranks(rows, "mean"),
        "by_mean_minus_se": ranks(rows, "mean_minus_se"),
        "search_trials": [
            {"trial": t.number, "state": t.state.name, "miou": t.values[0] if t.values else None} for t in search
        ],
        "n_train": sorted({t.user_attrs.get(trial_attrs.N_TRAIN) for t in trials} - {None}),
        "n_val": sorted({t.user_attrs.get(trial_attrs.N_VAL) for t in trials} - {None}),
        "trial_wall_s_mean": (
            sum(t.user_attrs.get(trial_attrs.WALL_TIME_S, 0.0) for t in trials) / len(trials) if trials else None
        ),
        "trials_total": len(trials),
    }


def machine() -> dict[str, Any]:
    model = platform.processor() or "-"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version()}


def print_table(result: dict[str, Any]) -> None:
    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.4f}"

    s = result["summary"]
    print(
        f"\n{result['images']} tiles (train {s['n_train']}, val {s['n_val']}), {result['trials']} search trials "
        f"x {result['epochs']} epochs, then --top {result['top']} --seeds {result['seeds']}; "
        f"{result['workers']} workers, wall {result['wall_s']:.0f} s, load {result['load_before']} -> "
        f"{result['load_after']}"
    )
    print(f"{'trial':>5} {'search':>8} {'n':>2} {'mean':>8} {'sd':>8} {'min':>8} {'mean-SE':>8}  runs")
    for r in s["configurations"]:
        runs = " ".join(f(v) for v in r["mious"])
        print(
            f"{r['trial']:>5} {f(r['search_miou']):>8} {r['n']:>2} {f(r['mean']):>8} {f(r['sd']):>8} "
            f"{f(r['min']):>8} {f(r['mean_minus_se']):>8}  {runs}"
        )
    print(f"order by single run: {s['by_search_run']}; by mean: {s['by_mean']}; by mean-SE: {s['by_mean_minus_se']}")
    print(result["verdict"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="default: $MARS_REAL_DATA or ../shared/data")
    parser.add_argument("--images", type=int, default=600, help="real tiles used (train + validation)")
    parser.add_argument("--trials", type=int, default=8, help="search trials")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--top", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--storage", default=None, help="database URL (default: a throw-away SQLite file)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few minutes")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.smoke:
        args.images, args.trials, args.epochs, args.top, args.seeds = 48, 2, 1, 2, 2
    path = args.data or real_data_path()
    if not path.exists():
        parser.error(f"real data file not found: {path} (set MARS_REAL_DATA)")

    import yaml

    load_before = [round(x, 2) for x in os.getloadavg()]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="confirm-spread-") as tmp:
        data = Path(tmp) / "subset.npz"
        n_images = subsample(path, args.images, data)
        space_file = Path(tmp) / "space.yaml"
        space_file.write_text(yaml.safe_dump(space(args.epochs)))
        url = args.storage or f"sqlite:///{tmp}/study.db"
        env = {**os.environ, "TUNER_STORAGE": url, "TUNER_HOME": tmp, "TF_CPP_MIN_LOG_LEVEL": "2"}
        cli(
            "tuner",
            "create",
            STUDY,
            "--data",
            str(data),
            "--space",
            str(space_file),
            "--trials",
            str(args.trials),
            "--pruner",
            "none",
            "--no-seed-config",
            "--overwrite",
            env=env,
        )
        search_s = run_workers(args.workers, data, env)
        said = cli("tuner", "confirm", STUDY, "--top", str(args.top), "--seeds", str(args.seeds), env=env)
        print(said.strip())
        confirm_s = run_workers(args.workers, data, env)
        summary = summarise(url)
    wall = time.perf_counter() - started
    rows = summary["configurations"]
    single = summary["by_search_run"][0] if rows else None
    stays = bool(rows) and summary["by_mean_minus_se"][0] == single
    verdict = (
        (
            f"single-run winner trial {single} "
            + (
                "stays first"
                if stays
                else f"does not stay first: --pick confirmed takes trial {summary['by_mean_minus_se'][0]}"
            )
            + f" (by the mean alone: trial {summary['by_mean'][0]})"
        )
        if rows
        else "nothing confirmed"
    )
    result = {
        "benchmark": "confirm_spread",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "data": str(path),
        "images": n_images,
        "trials": args.trials,
        "epochs": args.epochs,
        "top": args.top,
        "seeds": args.seeds,
        "workers": args.workers,
        "load_before": load_before,
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "wall_s": wall,
        "search_s": search_s,
        "confirm_s": confirm_s,
        "summary": summary,
        "single_run_winner_stays_first": stays,
        "verdict": verdict,
    }
    print_table(result)
    write_result(result, "confirm_spread", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
