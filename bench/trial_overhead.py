"""Per-trial fixed cost: today's one-off ``train`` against the worker's reusing ``Trainer``.

Each arm is one fresh process that runs the same sequence of trials, as one worker would: four
trials of one architecture and batch size that differ only in learning rate, weight decay, focal
gamma and class weights, then one trial of another width. Arms:

* ``old``: ``train(config, data)`` per trial, which clears the Keras session, splits the data,
  builds, compiles and traces everything again (what the worker did before the ``Trainer``);
* ``new``: one ``Trainer`` for the process (``worker run`` since issue 14): split data and
  compiled models are kept, hyperparameters are variables;
* ``new-restart`` (JAX only, or ``--restart``): ``new`` again in a second process that finds
  the first one's persistent compilation cache (``TUNER_COMPILE_CACHE``) on disk.

Per trial: time from ``study.ask()`` to the first trained batch; the first epoch's excess over
the median of the later epochs (tracing/compiling the train and validation steps); the final
evaluation's excess over the fastest evaluation of that architecture in the run (tracing the
predict function, flip TTA on); **fixed cost** = ask to fit start (ask, data, build, compile) +
first-epoch excess + evaluation excess; and its share of the trial's wall time. Every trial runs
``--epochs`` epochs (no early stop). TensorFlow's "triggered tf.function retracing" warnings are
counted per arm.

    python bench/trial_overhead.py                       # CPU defaults, ~5-10 minutes
    KERAS_BACKEND=jax python bench/trial_overhead.py     # the same on JAX
    python bench/trial_overhead.py --smoke               # tiny, for the test suite
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
from pathlib import Path
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._report import write_result  # noqa: E402

# (label, changes from the base config); the last one changes the architecture.
SEQUENCE: list[tuple[str, dict[str, Any]]] = [
    ("first", {}),
    ("lr, wd", {"learning_rate": 3e-4, "weight_decay": 1e-2}),
    ("focal gamma", {"focal_gamma": 2.0}),
    ("class weights, wd", {"class_weights": "sqrt_inverse_frequency", "weight_decay": 1e-4}),
    ("other width", {"base_filters": None}),  # None: 2x the base width
]


def _config(args: argparse.Namespace, changes: dict[str, Any]):
    from contract.config import TrainConfig

    base = TrainConfig(
        model=args.model,
        base_filters=args.base_filters,
        depth=args.depth,
        conventional_filters=8 * args.base_filters,
        residual_filters=args.base_filters,
        multiscale_filters=8 * args.base_filters,
        context_filters=args.base_filters,
        batch_size=args.batch,
        epochs=args.epochs,
        early_stopping_patience=10 * args.epochs,
        reduce_lr_patience=10 * args.epochs,
        augment_flips=True,
        tta=True,
        mixed_precision="auto",
        seed=0,
    )
    if changes.get("base_filters", 0) is None:
        changes = dict(changes, base_filters=2 * args.base_filters)
    return base.replace(**changes)


class _RetraceCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "retracing" in record.getMessage():
            self.count += 1


def run_arm(args: argparse.Namespace) -> dict[str, Any]:
    """One arm, in this process: the trial sequence, timed."""
    started = time.perf_counter()
    import optuna

    from contract.data import load_npz
    from contract.synth import write_npz
    from worker.training.backend import name as backend_name
    from worker.training.device import configure, describe
    from worker.training.train import Trainer, train

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    counter = _RetraceCounter()
    logging.getLogger("tensorflow").addHandler(counter)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.npz"
        write_npz(path, args.images, seed=0, n_aliens=0)
        data = load_npz(path, load_test=False)
    device = configure(None)
    startup_s = time.perf_counter() - started
    trainer = Trainer() if args.arm.startswith("new") else None
    study = optuna.create_study(direction="maximize")
    rows = []
    steps = SEQUENCE[: args.trials - 1] + [SEQUENCE[-1]]  # the last trial: another width
    for label, changes in steps:
        config = _config(args, changes)
        t0 = time.perf_counter()
        trial = study.ask()
        asked = time.perf_counter()
        result = train(config, data, verbose=False, device=device, trainer=trainer)
        wall = time.perf_counter() - t0
        study.tell(trial, result.best_miou)
        t = result.timings
        epochs = t["epoch_s"]
        median = statistics.median(epochs[1:]) if len(epochs) > 1 else epochs[0]
        rows.append(
            {
                "trial": len(rows),
                "change": label,
                "base_filters": config.base_filters,
                "reused_model": t["reused_model"],
                "reused_data": t["reused_data"],
                "ask_s": asked - t0,
                "to_fit_s": (asked - t0) + t["prepare_s"] + t["build_s"],
                "ask_to_first_batch_s": (asked - t0) + t["first_batch_s"],
                "epoch_s": epochs,
                "median_epoch_s": median,
                "first_epoch_excess_s": max(0.0, epochs[0] - median),  # < 0 is noise
                "first_epoch_minus_median_s": epochs[0] - median,
                "evaluate_s": t["evaluate_s"],
                "wall_s": wall,
                "miou": result.best_miou,
            }
        )
    return {
        "arm": args.arm,
        "backend": backend_name(),
        "startup_s": startup_s,
        "device": describe(device),
        "retracing_warnings": counter.count,
        "rows": rows,
    }


def _spawn(args: argparse.Namespace, arm: str, cache: str) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        out = Path(handle.name)
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--arm",
        arm,
        "--arm-out",
        str(out),
        "--images",
        str(args.images),
        "--base-filters",
        str(args.base_filters),
        "--depth",
        str(args.depth),
        "--batch",
        str(args.batch),
        "--epochs",
        str(args.epochs),
        "--trials",
        str(args.trials),
        "--model",
        args.model,
    ]
    env = dict(os.environ, TUNER_COMPILE_CACHE=cache, PYTHONPATH=str(ROOT))
    print(f"arm {arm}: running ...", flush=True)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-5000:])
        raise SystemExit(f"arm {arm} failed (exit {proc.returncode})")
    result = json.loads(out.read_text())
    out.unlink()
    return result


def summarise(arms: list[dict[str, Any]]) -> list[str]:
    """Fill in evaluation excess, fixed cost and share; return the verdict lines."""
    fastest_eval: dict[int, float] = {}
    for arm in arms:
        for row in arm["rows"]:
            width = row["base_filters"]
            fastest_eval[width] = min(fastest_eval.get(width, row["evaluate_s"]), row["evaluate_s"])
    for arm in arms:
        for row in arm["rows"]:
            row["evaluate_excess_s"] = row["evaluate_s"] - fastest_eval[row["base_filters"]]  # >= 0
            row["fixed_s"] = row["to_fit_s"] + row["first_epoch_excess_s"] + row["evaluate_excess_s"]
            row["fixed_share"] = row["fixed_s"] / row["wall_s"]
    verdict = []
    for arm in arms:
        rows = arm["rows"]
        first = rows[0]["fixed_s"]
        later = [r["fixed_s"] for r in rows[1:] if r["base_filters"] == rows[0]["base_filters"]]
        if later and first > 0:
            ratio = max(later) / first
            arm["later_vs_first"] = ratio
            ok = "met" if ratio <= 0.2 else "NOT met"
            verdict.append(
                f"{arm['arm']}: 2nd+ trials of the first architecture pay at most "
                f"{100 * ratio:.0f}% of the first trial's fixed cost "
                f"(goal <= 20%: {ok})"
            )
        verdict.append(f"{arm['arm']}: {arm['retracing_warnings']} tf.function retracing warnings")
    return verdict


def print_table(arms: list[dict[str, Any]]) -> None:
    print(
        "\n| arm | trial | change | reused model | ask to 1st batch s | 1st-epoch excess s "
        "| eval s (excess) | fixed s | trial s | fixed share |"
    )
    print("| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for arm in arms:
        for r in arm["rows"]:
            print(
                f"| {arm['arm']} | {r['trial'] + 1} | {r['change']} | "
                f"{'yes' if r['reused_model'] else 'no'} | {r['ask_to_first_batch_s']:.2f} | "
                f"{r['first_epoch_excess_s']:.2f} | {r['evaluate_s']:.2f} "
                f"({r['evaluate_excess_s']:.2f}) | {r['fixed_s']:.2f} | {r['wall_s']:.2f} | "
                f"{100 * r['fixed_share']:.0f}% |"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=64, help="synthetic images (x4 flips)")
    parser.add_argument("--model", default="multipath")
    parser.add_argument("--base-filters", type=int, default=8)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--trials", type=int, default=len(SEQUENCE), help="trials; the last one always has another width"
    )
    parser.add_argument("--arms", default=None, help="default old,new (+new-restart on JAX)")
    parser.add_argument("--restart", action="store_true", help="add the new-restart arm")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for the tests")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--arm", help=argparse.SUPPRESS)
    parser.add_argument("--arm-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.arm:  # a child process: one arm
        args.arm_out.write_text(json.dumps(run_arm(args)))
        return 0
    if args.smoke:
        args.images, args.base_filters, args.depth, args.batch = 12, 4, 2, 8
        args.epochs, args.trials, args.model = 2, 4, "unet"
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    arms = (
        args.arms.split(",")
        if args.arms
        else ["old", "new"] + (["new-restart"] if backend == "jax" or args.restart else [])
    )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="compile-cache-") as cache:
        # old and new start cold, each with its own cache; new-restart finds new's
        results = [_spawn(args, arm, str(Path(cache) / arm.removesuffix("-restart"))) for arm in arms]
    verdict = summarise(results)
    print_table(results)
    print()
    for line in verdict:
        print(line)
    result = {
        "benchmark": "trial_overhead",
        "date": _dt.date.today().isoformat(),
        "backend": backend,
        "load_average": os.getloadavg(),
        "settings": {
            k: getattr(args, k) for k in ("images", "model", "base_filters", "depth", "batch", "epochs", "trials")
        },
        "arms": results,
        "verdict": verdict,
        "total_s": time.perf_counter() - started,
    }
    write_result(result, "trial_overhead", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
