"""Pruning efficiency: a fixed trial budget with Hyperband vs without pruning.

Both arms run the same search space on the same synthetic data with ``worker.training.train.train`` and
the worker's own per-epoch report (``trial.report(val_miou, epoch + 1)`` then
``trial.should_prune()``), in one process with an in-memory study. The pruner is built exactly
as a study created by ``tuner create`` builds it (:meth:`contract.study_spec.StudySpec.make_pruner`:
``HyperbandPruner(min_resource=1, max_resource=epochs, reduction_factor=3)``).

The sampler is the study's seeded TPE. With a budget of at most ``n_startup_trials`` (10) trials
TPE samples at random, so both arms train exactly the same configurations, in the same order:
the only difference is that one arm may stop some of them early. Larger budgets let TPE's
suggestions diverge between the arms (pruned trials feed it differently), which is realistic but
no longer a controlled comparison; the JSON records the parameters of every trial either way.

Reported per arm: best validation mIoU (``TrainResult.best_miou`` of the completed trials),
total epochs trained, wall time, and how many trials were pruned.

    python bench/pruning.py                          # ~8 trials x 9 epochs per arm, CPU minutes
    python bench/pruning.py --smoke                  # seconds
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
import os
from pathlib import Path
import platform
import sys
import time
from typing import Any
import warnings

from _real import CPU_PARAMS  # bench/ is on sys.path when a script runs
from _report import write_result

ARMS = ("none", "hyperband")


def make_space(epochs: int, max_images: int) -> Any:
    """A small search space over the Multipath UNet; widths stay tiny so CPU runs finish."""
    from contract.space import SearchSpace

    return SearchSpace.from_dict(
        {
            "fixed": {
                "model": "multipath",
                "epochs": epochs,
                "max_images": max_images,
                "batch_size": 16,
                "validation_fraction": 0.25,
                "early_stopping_patience": epochs,
                "reduce_lr_patience": epochs,
                "residual_filters": 8,
                "context_filters": 8,
                # Few steps per epoch: BatchNorm statistics must keep up (see TrainConfig).
                "batchnorm_momentum": 0.9,
            },
            "params": {k: v for k, v in CPU_PARAMS.items() if k != "weight_decay"},  # as docs/benchmarks.md measured
        }
    )


def run_arm(arm: str, space: Any, data: Any, n_trials: int, seed: int) -> dict[str, Any]:
    """One study of ``n_trials`` trials with pruner ``arm``; per-trial rows and totals."""
    import optuna

    from contract.study_spec import StudySpec
    from worker.training.train import train

    spec = StudySpec(
        space=space, data_fingerprint=data.fingerprint, n_trials=n_trials, sampler="tpe", seed=seed, pruner=arm
    )
    study = optuna.create_study(direction="maximize", sampler=spec.make_sampler(), pruner=spec.make_pruner())
    trials = []
    started = time.perf_counter()
    for _ in range(n_trials):
        trial = study.ask()
        config = space.sample(trial)
        epochs_run = 0

        def on_epoch(epoch: int, val_miou: float) -> None:
            nonlocal epochs_run
            epochs_run = epoch + 1
            trial.report(val_miou if math.isfinite(val_miou) else 0.0, epoch + 1)  # noqa: B023 - called within this iteration
            if trial.should_prune():  # noqa: B023 - called within this iteration
                raise optuna.TrialPruned()

        t = time.perf_counter()
        try:
            result = train(config, data, epoch_callback=on_epoch, verbose=False)
        except optuna.TrialPruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            state, value = "pruned", None
        else:
            value = result.best_miou if math.isfinite(result.best_miou) else 0.0
            study.tell(trial, value)
            state = "complete"
        trials.append(
            {
                "number": trial.number,
                "params": trial.params,
                "state": state,
                "epochs": epochs_run,
                "best_miou": value,
                "seconds": time.perf_counter() - t,
            }
        )
        print(
            f"  {arm:9} trial {trial.number}: {state:8} after {epochs_run} epoch(s)"
            + (f", mIoU {value:.4f}" if value is not None else ""),
            flush=True,
        )
    complete = [t["best_miou"] for t in trials if t["state"] == "complete"]
    return {
        "arm": arm,
        "trials": trials,
        "n_trials": len(trials),
        "pruned": sum(t["state"] == "pruned" for t in trials),
        "best_miou": max(complete) if complete else None,
        "total_epochs": sum(t["epochs"] for t in trials),
        "seconds": time.perf_counter() - started,
    }


def print_table(result: dict[str, Any]) -> None:
    print(
        f"\n{result['n_trials']} trials per arm, up to {result['epochs']} epochs each, "
        f"{result['images']} synthetic images"
    )
    print(f"{'pruner':10} {'best mIoU':>10} {'epochs':>7} {'pruned':>7} {'seconds':>8}")
    for arm in result["arms"]:
        best = "n/a" if arm["best_miou"] is None else f"{arm['best_miou']:.4f}"
        print(f"{arm['arm']:10} {best:>10} {arm['total_epochs']:>7} {arm['pruned']:>7} {arm['seconds']:>8.1f}")
    print(result["summary"])


def summary(arms: list[dict[str, Any]]) -> str:
    by = {a["arm"]: a for a in arms}
    if "none" not in by or "hyperband" not in by:
        return ""
    none, hb = by["none"], by["hyperband"]
    saved = 1.0 - hb["total_epochs"] / none["total_epochs"]
    gap = (none["best_miou"] or 0.0) - (hb["best_miou"] or 0.0)
    return (
        f"Hyperband spent {100 * saved:.0f}% fewer epochs; best mIoU "
        f"{'lower' if gap > 0 else 'not lower'} by {abs(gap):.4f} than without pruning"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=9, help="max epochs per trial (Hyperband's max resource)")
    parser.add_argument("--images", type=int, default=48, help="synthetic images (train + validation)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.smoke:
        args.trials, args.epochs, args.images = 1, 2, 12

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tempfile

    import optuna

    from contract.data import load_npz
    from contract.synth import write_npz

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    with tempfile.TemporaryDirectory(prefix="bench-pruning-") as tmp:
        path = Path(tmp) / "synthetic.npz"  # the user's route: a challenge-format file
        write_npz(path, args.images, args.seed, n_aliens=0)
        data = load_npz(path)
    space = make_space(args.epochs, args.images)
    arms = [run_arm(arm, space, data, args.trials, args.seed) for arm in ARMS]
    result = {
        "benchmark": "pruning",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "command": " ".join([Path(sys.argv[0]).name] + (sys.argv[1:] if argv is None else argv)),
        "n_trials": args.trials,
        "epochs": args.epochs,
        "images": args.images,
        "arms": arms,
        "summary": summary(arms),
    }
    print_table(result)
    write_result(result, "pruning", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
