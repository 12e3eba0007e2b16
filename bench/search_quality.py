"""Search quality on the real AI4Mars tiles: which pruner keeps the winner, at what epoch cost.

For each sampler seed, the study's seeded sampler draws ``--trials`` configurations of a small
Multipath UNet space (with at most 10 trials TPE samples at random, so the configurations do not
depend on the pruner). Each configuration is trained once for ``--epochs`` epochs with
``worker.training.train.train`` on the real file (grouped split), recording the per-epoch
validation mIoU the worker reports to the pruner and the final re-evaluated best mIoU.

Every pruner arm is then *replayed* on those recorded curves: an Optuna study with the arm's
pruner (built by ``StudySpec.make_pruner``, as workers build it) sees the trials in the same order,
gets the same ``report(value, epoch)`` calls and ``should_prune()`` questions a live worker
asks, and a pruned trial is charged only the epochs it trained. This is exact, not an
approximation: training is seeded with TensorFlow op determinism and every trial starts from
``clear_session`` with the same seed, so a trial stopped at epoch k would have reported the very
same first k values, and a trial that is not pruned ends with the same result. It lets all arms
share one set of training runs, which is what makes >= 3 seeds affordable on 2 CPU cores.

Reported per arm: best mIoU per seed, its mean and spread (population std over seeds), epochs
spent (sum over seeds) and their share of the no-pruning arm's, and whether the arm meets the
goal: mean best within the no-pruning arm's seed-to-seed spread of the no-pruning mean, with at
most 50% of its epochs.

    flock /tmp/bench.lock python bench/search_quality.py            # ~20-25 min on 2 loaded cores
    python bench/search_quality.py --smoke                          # ~1 min
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
import datetime as _dt
import json
import math
import os
from pathlib import Path
import platform
import statistics
import sys
import time
from typing import Any
import warnings

from _real import (  # bench/ is on sys.path when a script runs
    CPU_PARAMS,
    constant_baseline,
    real_data_path,
)
from _report import write_result

#: Arms as (name, StudySpec pruner, min_epochs as a fraction of the epoch budget, at least 1).
ARMS: tuple[tuple[str, str, float], ...] = (
    ("none", "none", 0.0),
    ("hyperband-min1", "hyperband", 0.0),  # the pruner every study used so far
    ("hyperband-min1/3", "hyperband", 1 / 3),
    ("hyperband-min2/3", "hyperband", 2 / 3),
    ("median-warm1/3", "median", 1 / 3),
)


def make_space(epochs: int, max_images: int) -> Any:
    """A small search space over the Multipath UNet, sized for 2 CPU cores."""
    from contract.space import SearchSpace

    return SearchSpace.from_dict(
        {
            "fixed": {
                "model": "multipath",
                "epochs": epochs,
                "max_images": max_images,
                "batch_size": 16,
                "validation_fraction": 0.25,
                "augment_flips": False,
                "early_stopping_patience": epochs,
                "reduce_lr_patience": epochs,
                "residual_filters": 8,
                "context_filters": 8,
                "batchnorm_momentum": 0.9,  # few steps per epoch: BatchNorm must keep up
            },
            "params": CPU_PARAMS,
        }
    )


def spec_for(space: Any, fingerprint: str, n_trials: int, seed: int, pruner: str, fraction: float) -> Any:
    from contract.study_spec import StudySpec

    min_epochs = max(1, int(round(fraction * space.max_epochs)))
    return StudySpec(
        space=space,
        data_fingerprint=fingerprint,
        n_trials=n_trials,
        sampler="tpe",
        seed=seed,
        pruner=pruner,
        min_epochs=min_epochs,
    )


def train_seed(
    space: Any, data: Any, n_trials: int, seed: int, save: Callable[[], None] = lambda: None, runs: list | None = None
) -> list[dict[str, Any]]:
    """Train the seed's ``n_trials`` configurations in full; per-epoch curves and results.

    ``runs`` receives each run as it finishes and ``save()`` is called after each, so an
    interrupted benchmark keeps what it trained (``--replay`` reads it back).
    """
    import optuna

    from worker.training.train import train

    spec = spec_for(space, data.fingerprint, n_trials, seed, "none", 0.0)
    study = optuna.create_study(direction="maximize", sampler=spec.make_sampler())
    runs = [] if runs is None else runs
    for _ in range(n_trials):
        trial = study.ask()
        config = space.sample(trial)
        curve: list[float] = []
        started = time.perf_counter()
        result = train(
            config,
            data,
            verbose=False,
            epoch_callback=lambda _e, v: curve.append(v if math.isfinite(v) else 0.0),  # noqa: B023 - this iteration
        )
        value = result.best_miou if math.isfinite(result.best_miou) else 0.0
        study.tell(trial, value)
        runs.append(
            {
                "params": trial.params,
                "curve": curve,
                "best_miou": value,
                "per_class_iou": {str(k): v for k, v in result.per_class_iou.items()},
                "seconds": time.perf_counter() - started,
            }
        )
        save()
        print(
            f"  seed {seed} trial {trial.number}: mIoU {value:.4f} ({time.perf_counter() - started:.0f} s)", flush=True
        )
    return runs


def replay(spec: Any, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Run ``spec``'s pruner over recorded runs exactly as a worker would report them."""
    import optuna

    study = optuna.create_study(
        direction="maximize", sampler=spec.make_sampler(), pruner=spec.make_pruner(), study_name=f"replay-{spec.seed}"
    )
    trials = []
    for run in runs:
        trial = study.ask()
        epochs = len(run["curve"])
        state = "complete"
        for epoch, value in enumerate(run["curve"], start=1):
            trial.report(value, epoch)
            if trial.should_prune():
                epochs, state = epoch, "pruned"
                break
        if state == "pruned":
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, run["best_miou"])
        trials.append(
            {"state": state, "epochs": epochs, "best_miou": run["best_miou"] if state == "complete" else None}
        )
    complete = [t["best_miou"] for t in trials if t["state"] == "complete"]
    return {
        "trials": trials,
        "best_miou": max(complete) if complete else 0.0,
        "epochs": sum(t["epochs"] for t in trials),
        "pruned": sum(t["state"] == "pruned" for t in trials),
    }


def seed_config_for_cpu(epochs: int, max_images: int) -> Any:
    """The shipped seed configuration, widths and batch divided by 8 and epochs cut to fit a CPU.

    Learning rate, weight decay, focal gamma, class weights and the LR plateau factor stay the
    seed's; patience scales with the epoch budget (25 of 200 epochs).
    """
    from contract.config import TrainConfig
    from tuner.warm_start import read_config, seed_config_path

    values = read_config(seed_config_path())
    for name in (
        "base_filters",
        "conventional_filters",
        "residual_filters",
        "multiscale_filters",
        "context_filters",
        "batch_size",
    ):
        values[name] = max(4, values[name] // 8)
    values.update(
        epochs=epochs,
        early_stopping_patience=epochs,
        augment_flips=False,
        reduce_lr_patience=max(1, round(epochs * 25 / 200)),
        max_images=max_images,
        validation_fraction=0.25,
        batchnorm_momentum=0.9,
    )
    return TrainConfig.from_dict(values)


def real_search(space: Any, data: Any, n_trials: int, seed: int) -> dict[str, Any]:
    """A budgeted search as a study runs it: seeded TPE and the default pruner of ``StudySpec``."""
    import optuna

    from contract.study_spec import StudySpec
    from worker.training.train import train

    spec = StudySpec(space=space, data_fingerprint=data.fingerprint, n_trials=n_trials, seed=seed)
    study = optuna.create_study(direction="maximize", sampler=spec.make_sampler(), pruner=spec.make_pruner())
    best: dict[str, Any] = {"best_miou": float("nan")}
    epochs = 0
    for _ in range(n_trials):
        trial = study.ask()
        config = space.sample(trial)
        ran = [0]

        def on_epoch(epoch: int, value: float, trial=trial, ran=ran) -> None:
            ran[0] = epoch + 1
            trial.report(value if math.isfinite(value) else 0.0, epoch + 1)
            if trial.should_prune():
                raise optuna.TrialPruned()

        try:
            result = train(config, data, verbose=False, epoch_callback=on_epoch)
        except optuna.TrialPruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            value = result.best_miou if math.isfinite(result.best_miou) else 0.0
            study.tell(trial, value)
            if not value <= best["best_miou"]:
                best = {
                    "best_miou": value,
                    "params": trial.params,
                    "per_class_iou": {str(k): v for k, v in result.per_class_iou.items()},
                }
        epochs += ran[0]
        print(f"  search trial {trial.number}: {ran[0]} epoch(s)", flush=True)
    return {"pruner": spec.pruner, "min_epochs": spec.min_epochs, "n_trials": n_trials, "epochs": epochs, **best}


def summarise(arms: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """Mean/spread per arm, the goal check against the no-pruning arm, and the winner."""
    base = next(a for a in arms if a["arm"] == "none")
    base_mean = statistics.fmean(base["best_per_seed"])
    spread = statistics.pstdev(base["best_per_seed"])
    for arm in arms:
        arm["best_mean"] = statistics.fmean(arm["best_per_seed"])
        arm["best_std"] = statistics.pstdev(arm["best_per_seed"])
        arm["epochs_share"] = arm["epochs"] / base["epochs"]
        arm["gap_to_none"] = base_mean - arm["best_mean"]
        arm["meets_goal"] = bool(
            arm["arm"] != "none" and arm["gap_to_none"] <= spread + 1e-12 and arm["epochs_share"] <= 0.5
        )
    # The winner keeps the no-pruning best (within the spread) at the fewest epochs; whether it
    # also meets the <= 50% goal is reported beside it.
    keeps = [a for a in arms if a["gap_to_none"] <= spread + 1e-12]
    win = min(keeps, key=lambda a: (a["epochs_share"], a["gap_to_none"]))
    for arm in arms:
        arm["winner"] = arm is win
    text = (
        f"winner: {win['arm']}: best mIoU {win['best_mean']:.4f} vs {base_mean:.4f} without "
        f"pruning (spread {spread:.4f}) with {100 * win['epochs_share']:.0f}% of its epochs; "
        f"goal (<= 50% of the epochs) {'met' if win['meets_goal'] else 'not met'}"
    )
    return arms, text


def print_table(result: dict[str, Any]) -> None:
    print(
        f"\n{result['seeds']} sampler seeds x {result['n_trials']} trials x up to "
        f"{result['epochs']} epochs, {result['images']} real tiles (grouped split), "
        f"constant-predictor mIoU {result['constant_baseline']['miou']:.4f}"
    )
    print(f"{'pruner':18} {'best mIoU mean':>14} {'spread':>7} {'epochs':>7} {'share':>6} {'pruned':>7} {'goal':>5}")
    for arm in result["arms"]:
        print(
            f"{arm['arm']:18} {arm['best_mean']:>14.4f} {arm['best_std']:>7.4f} "
            f"{arm['epochs']:>7} {100 * arm['epochs_share']:>5.0f}% {arm['pruned']:>7} "
            f"{'yes' if arm['meets_goal'] else 'no':>5}"
        )
    print(result["summary"])
    search = result.get("real_search")
    if search:
        print(
            f"\nreal search ({search['search']['n_trials']} trials, pruner {search['search']['pruner']}) "
            f"vs the seed configuration scaled to CPU vs the best constant predictor"
        )
        print(f"{'':22} {'mIoU':>7} " + " ".join(f"{c:>8}" for c in ("soil", "bedrock", "sand", "big rock")))
        for name, row in (
            ("search best", search["search"]),
            ("seed config (CPU)", search["seed_config_cpu"]),
            ("constant predictor", search["constant_baseline"]),
        ):
            per = row.get("per_class_iou") or {}
            print(
                f"{name:22} {row.get('best_miou', row.get('miou', float('nan'))):>7.4f} "
                + " ".join(f"{per.get(str(c), float('nan')):>8.4f}" for c in range(1, 5))
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="default: $MARS_REAL_DATA or ../shared/data")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=6, help="per seed; <= 10 keeps TPE random")
    parser.add_argument("--epochs", type=int, default=9, help="max epochs per trial")
    parser.add_argument("--images", type=int, default=160, help="real tiles used (train + validation)")
    parser.add_argument(
        "--search-trials",
        type=int,
        default=6,
        help="then a budgeted search of this many trials (study defaults) and the seed "
        "configuration scaled to CPU, against the constant predictor; 0: skip",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, about a minute")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--runs", type=Path, default=None, help="save the training runs here as they finish (default: next to --out)"
    )
    parser.add_argument(
        "--replay", type=Path, default=None, help="skip training: replay the arms on runs saved by an earlier --runs"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.seeds, args.trials, args.epochs, args.images = 2, 1, 2, 16
        args.search_trials = 1
    if args.trials > 10:
        parser.error("--trials must be <= 10: beyond TPE's random start-up the arms would diverge")
    recorded = json.loads(args.replay.read_text()) if args.replay else None
    if recorded is not None:  # the sizes the runs were trained with
        sizes = recorded.get("args") or recorded
        args.epochs, args.images = int(sizes["epochs"]), int(sizes["images"])
    path = args.data or real_data_path()
    if not path.exists():
        parser.error(f"real data file not found: {path} (set MARS_REAL_DATA)")

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import optuna

    from contract.data import load_npz
    from contract.splitting import split

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    started = time.perf_counter()
    data = load_npz(path, load_test=False, max_images=args.images, seed=0)
    space = make_space(args.epochs, args.images)
    # The validation masks every trial is scored on (fixed validation_fraction and seed 0).
    _, val = split(data.masks, 0.25, 0, data.groups)
    baseline = constant_baseline(np.asarray(data.masks)[val])

    if args.replay:
        runs = {int(k): v for k, v in recorded["runs"].items() if v}
        args.trials = max(len(v) for v in runs.values())
        runs = {k: v for k, v in runs.items() if len(v) == args.trials}  # an interrupted seed: out
        args.seeds = len(runs)
    else:
        runs = {}
        runs_path = args.runs or (args.out.with_suffix(".runs.json") if args.out else None)

        def save() -> None:
            if runs_path is not None:
                runs_path.write_text(
                    json.dumps(
                        {
                            "args": vars(args) | {"data": str(path), "out": None, "runs": None, "replay": None},
                            "runs": runs,
                        },
                        default=str,
                    )
                )

        for seed in range(args.seeds):
            runs[seed] = []
            train_seed(space, data, args.trials, seed, save, runs[seed])
    arms = []
    for name, pruner, fraction in ARMS:
        per_seed = [
            replay(spec_for(space, data.fingerprint, args.trials, seed, pruner, fraction), runs[seed])
            for seed in sorted(runs)
        ]
        arms.append(
            {
                "arm": name,
                "pruner": pruner,
                "min_epochs": max(1, int(round(fraction * args.epochs))),
                "best_per_seed": [r["best_miou"] for r in per_seed],
                "epochs": sum(r["epochs"] for r in per_seed),
                "pruned": sum(r["pruned"] for r in per_seed),
                "per_seed": per_seed,
            }
        )
    arms, text = summarise(arms)
    search = None
    if args.search_trials:
        from worker.training.train import train

        seed_result = train(seed_config_for_cpu(args.epochs, args.images), data, verbose=False)
        search = {
            "constant_baseline": baseline,
            "seed_config_cpu": {
                "best_miou": seed_result.best_miou,
                "per_class_iou": {str(k): v for k, v in seed_result.per_class_iou.items()},
            },
            "search": real_search(space, data, args.search_trials, seed=100),
        }
    result = {
        "benchmark": "search_quality",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg": os.getloadavg()},
        "command": " ".join([Path(sys.argv[0]).name] + (sys.argv[1:] if argv is None else argv)),
        "data": str(path),
        "fingerprint": data.fingerprint,
        "seeds": args.seeds,
        "n_trials": args.trials,
        "epochs": args.epochs,
        "images": args.images,
        "n_val": int(len(val)),
        "constant_baseline": baseline,
        "runs": {str(k): v for k, v in runs.items()},
        "arms": arms,
        "summary": text,
        "real_search": search,
        "seconds": time.perf_counter() - started,
    }
    print_table(result)
    write_result(result, "search_quality", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
