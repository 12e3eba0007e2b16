"""The worker's training path on a GPU: throughput against a plain ``fit`` and per-trial fixed cost.

Made for one short run on a lent GPU machine with Keras on JAX (``KERAS_BACKEND=jax``), and
tested on CPU with ``--smoke``. Three parts, most important first, each skipped once the time
budget (``--budget-s``) is spent, each written to ``--out-dir`` as soon as it is done:

1. **Fixed cost, one process**: a ``Trainer`` runs ``--trials`` trials of the seed-size model
   (base 32, multipath) that differ in learning rate, weight decay, focal gamma and class
   weights (flip TTA on). Fixed cost per trial = ask to fit start + first-epoch excess over the
   median epoch + evaluation excess over the fastest evaluation; its share is taken of a
   seed-size trial (``--seed-epochs`` epochs at the measured median epoch time plus one
   evaluation), which is what a real trial trains.
2. **Fixed cost after a restart**: the first trial again in a new process that finds part 1's
   persistent compilation cache (``TUNER_COMPILE_CACHE``).
3. **Throughput**: for each batch size and precision, the worker's path (``Trainer.train``:
   callbacks, per-epoch validation, history) against a plain ``model.fit(x, y)`` of the same
   model on the same flipped numpy arrays, with the same validation data, loss, optimizer and
   metric. img/s = training images per epoch / median epoch time (validation included in both),
   over the epochs after the first.

    KERAS_BACKEND=jax python bench/gpu.py --data real_mars.npz --out-dir $OUT
    KERAS_BACKEND=jax python bench/gpu.py --smoke --out-dir /tmp/gpu-smoke
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import os
from pathlib import Path
import statistics
import subprocess
import sys
import time
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CHANGES = [
    {},
    {"learning_rate": 3e-4, "weight_decay": 1e-2},
    {"focal_gamma": 2.0},
    {"class_weights": "sqrt_inverse_frequency", "weight_decay": 1e-4},
]


def _base(args: argparse.Namespace, batch: int, epochs: int):
    from contract.config import TrainConfig

    return TrainConfig(
        model="multipath",
        base_filters=args.base_filters,
        depth=3,
        conventional_filters=8 * args.base_filters,
        residual_filters=args.base_filters,
        multiscale_filters=8 * args.base_filters,
        context_filters=args.base_filters,
        batch_size=batch,
        epochs=epochs,
        early_stopping_patience=10 * epochs,
        reduce_lr_patience=10 * epochs,
        augment_flips=True,
        tta=False,
        mixed_precision="auto",
        max_images=args.images,
        seed=0,
    )


def _device(policy: str):
    from worker.training.device import configure

    device = configure(None)
    if policy == "float32":
        return dataclasses.replace(device, mixed_precision=False)
    if device.kind != "GPU":  # CPU smoke: mixed policies are slow there but must still run
        device = dataclasses.replace(device, kind="GPU")
    return dataclasses.replace(device, mixed_precision=True, half=policy.removeprefix("mixed_"))


def _load(args: argparse.Namespace):
    from contract.data import load_npz
    from contract.synth import write_npz

    path = args.data
    if path is None:
        path = Path(args.out_dir) / "synthetic.npz"
        write_npz(path, args.images or 2505, seed=0, n_aliens=0)
    return load_npz(path, load_test=False, max_images=args.images, seed=0)


def sequence(args: argparse.Namespace, data, trials: int) -> list[dict[str, Any]]:
    """Part 1 (and 2 with trials=1 in a new process): trials through one Trainer."""
    from worker.training.train import Trainer

    trainer = Trainer()
    device = _device(args.policy)
    rows = []
    for changes in CHANGES[:trials]:
        config = _base(args, args.batch, args.epochs).replace(tta=True, **changes)
        t0 = time.perf_counter()
        result = trainer.train(config, data, verbose=True, device=device)
        wall = time.perf_counter() - t0
        t = result.timings
        epochs = t["epoch_s"]
        median = statistics.median(epochs[1:])
        rows.append(
            {
                "changes": changes,
                "reused_model": t["reused_model"],
                "to_fit_s": t["prepare_s"] + t["build_s"],
                "first_batch_s": t["first_batch_s"],
                "epoch_s": epochs,
                "median_epoch_s": median,
                "first_epoch_excess_s": max(0.0, epochs[0] - median),
                "evaluate_s": t["evaluate_s"],
                "wall_s": wall,
                "miou": result.best_miou,
                "n_train": result.n_train,
            }
        )
    return rows


def throughput(args: argparse.Namespace, data, batch: int, policy: str) -> dict[str, Any]:
    """Part 3 for one batch size and precision: worker path, then plain fit, same process."""
    import keras
    import numpy as np

    from worker.training.batches import flipped
    from worker.training.losses import focal_loss
    from worker.training.metrics import MeanIoUForeground
    from worker.training.model import build_model
    from worker.training.train import Trainer

    device = _device(policy)
    config = _base(args, batch, args.epochs)
    t0 = time.perf_counter()
    result = Trainer().train(config, data, verbose=True, device=device)
    worker_first = time.perf_counter() - t0
    worker_epochs = result.timings["epoch_s"]
    prepared_x, prepared_y, xv, yv = _split(config, data)
    x, y = flipped(prepared_x, prepared_y, True)

    class Times(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.seconds: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self._t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self._t)

    keras.utils.clear_session()
    keras.mixed_precision.set_global_policy(device.policy)
    try:
        keras.utils.set_random_seed(0)
        model = build_model(config)
        weights = np.asarray(result.class_weights)
        model.compile(
            optimizer=keras.optimizers.AdamW(config.learning_rate, weight_decay=config.weight_decay),
            loss=focal_loss(config.focal_gamma, weights),
            metrics=[MeanIoUForeground()],
        )
        times = Times()
        t0 = time.perf_counter()
        model.fit(
            x,
            y,
            batch_size=batch,
            epochs=args.epochs,
            shuffle=True,
            validation_data=(xv[..., None], yv),
            validation_batch_size=batch,
            callbacks=[times],
            verbose=0,
        )
        plain_first = time.perf_counter() - t0
    finally:
        keras.mixed_precision.set_global_policy("float32")
    n = len(x)
    worker_ips = n / statistics.median(worker_epochs[1:])
    plain_ips = n / statistics.median(times.seconds[1:])
    return {
        "batch": batch,
        "policy": policy,
        "images_per_epoch": n,
        "worker_img_s": worker_ips,
        "plain_img_s": plain_ips,
        "ratio": worker_ips / plain_ips,
        "worker_epoch_s": worker_epochs,
        "plain_epoch_s": times.seconds,
        "worker_first_epoch_s": worker_epochs[0],
        "plain_first_epoch_s": times.seconds[0],
        "worker_run_s": worker_first,
        "plain_run_s": plain_first,
        "miou_worker": result.best_miou,
    }


def _split(config, data):
    from worker.training.train import Trainer

    prepared, _ = Trainer().prepare(config, data)
    return prepared.x_train, prepared.y_train, prepared.x_val, prepared.y_val


def _fixed(rows: list[dict[str, Any]], seed_epochs: int) -> None:
    fastest_eval = min(r["evaluate_s"] for r in rows)
    for r in rows:
        r["evaluate_excess_s"] = r["evaluate_s"] - fastest_eval
        r["fixed_s"] = r["to_fit_s"] + r["first_epoch_excess_s"] + r["evaluate_excess_s"]
        r["seed_trial_s"] = seed_epochs * r["median_epoch_s"] + fastest_eval
        r["fixed_share_of_seed_trial"] = r["fixed_s"] / (r["seed_trial_s"] + r["fixed_s"])


def _save(out_dir: Path, name: str, value: Any) -> None:
    (out_dir / f"{name}.json").write_text(json.dumps(value, indent=2, default=str) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="challenge .npz (else synthetic)")
    parser.add_argument(
        "--images", type=int, default=None, help="images used (default all; synthetic: 2,505 like the challenge)"
    )
    parser.add_argument("--base-filters", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run (first = compile)")
    parser.add_argument("--trials", type=int, default=4, help="trials of part 1 (0: skip 1 and 2)")
    parser.add_argument("--batch", type=int, default=128, help="batch of the fixed-cost parts")
    parser.add_argument("--policy", default="mixed_bfloat16", help="precision of those parts")
    parser.add_argument(
        "--combos",
        default="128:mixed_bfloat16,128:float32,256:mixed_bfloat16,256:float32,128:mixed_float16,256:mixed_float16",
        help="BATCH:POLICY pairs of part 3, in order of importance",
    )
    parser.add_argument("--seed-epochs", type=int, default=100, help="a seed-size trial's epochs")
    parser.add_argument("--budget-s", type=float, default=330.0, help="start no part after this")
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, on CPU")
    parser.add_argument("--part", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.images, args.base_filters, args.epochs, args.trials = 24, 4, 2, 2
        args.batch, args.combos, args.seed_epochs = 8, "8:float32", 10
        args.budget_s = float("inf")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data = _load(args)

    if args.part == "restart":  # part 2, in its own process
        _save(args.out_dir, "restart", sequence(args, data, 1))
        return 0

    from worker.training.backend import compile_cache_dir
    from worker.training.backend import name as backend_name
    from worker.training.device import describe

    print(
        f"backend {backend_name()}, compile cache {compile_cache_dir()}, "
        f"data {len(data)} images, {time.perf_counter() - started:.1f}s",
        flush=True,
    )
    summary: dict[str, Any] = {
        "benchmark": "gpu",
        "date": _dt.date.today().isoformat(),
        "device": describe(_device("float32")),
        "args": vars(args),
    }
    if args.trials > 0:  # parts 1 and 2 (--trials 0: throughput only)
        rows = sequence(args, data, args.trials)
        _fixed(rows, args.seed_epochs)
        summary["sequence"] = rows
        _save(args.out_dir, "summary", summary)
        for i, r in enumerate(rows):
            print(
                f"trial {i + 1}: reused {r['reused_model']} fixed {r['fixed_s']:.2f}s "
                f"(to fit {r['to_fit_s']:.2f}, 1st epoch +{r['first_epoch_excess_s']:.2f}, "
                f"eval +{r['evaluate_excess_s']:.2f}); median epoch {r['median_epoch_s']:.3f}s; "
                f"{100 * r['fixed_share_of_seed_trial']:.1f}% of a {args.seed_epochs}-epoch trial",
                flush=True,
            )

        if time.perf_counter() - started < args.budget_s:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--part", "restart"]
            cmd += [a for a in (argv if argv is not None else sys.argv[1:])]
            proc_t0 = time.perf_counter()
            path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
            proc = subprocess.run(cmd, env=dict(os.environ, PYTHONPATH=path), text=True, capture_output=True)
            if proc.returncode == 0:
                restart = json.loads((args.out_dir / "restart.json").read_text())
                for r in restart:
                    r["evaluate_excess_s"] = r["evaluate_s"] - min(x["evaluate_s"] for x in rows)
                    r["fixed_s"] = r["to_fit_s"] + r["first_epoch_excess_s"] + r["evaluate_excess_s"]
                summary["restart"] = {"rows": restart, "process_s": time.perf_counter() - proc_t0}
                print(
                    f"restart: fixed {restart[0]['fixed_s']:.2f}s (first batch after "
                    f"{restart[0]['first_batch_s']:.2f}s) vs {rows[0]['fixed_s']:.2f}s cold",
                    flush=True,
                )
            else:
                summary["restart"] = {"error": proc.stderr[-3000:]}
                print(proc.stderr[-3000:], flush=True)
            _save(args.out_dir, "summary", summary)

    summary["throughput"] = []
    for combo in args.combos.split(","):
        batch, policy = int(combo.split(":")[0]), combo.split(":")[1]
        if time.perf_counter() - started > args.budget_s:
            print(f"budget spent: skipping batch {batch} {policy}", flush=True)
            continue
        row = throughput(args, data, batch, policy)
        summary["throughput"].append(row)
        _save(args.out_dir, "summary", summary)
        print(
            f"batch {batch} {policy}: worker {row['worker_img_s']:.0f} img/s, plain fit "
            f"{row['plain_img_s']:.0f} img/s, ratio {row['ratio']:.3f}; first epoch "
            f"{row['worker_first_epoch_s']:.1f}s / {row['plain_first_epoch_s']:.1f}s",
            flush=True,
        )
    summary["total_s"] = time.perf_counter() - started
    _save(args.out_dir, "summary", summary)
    print(f"done in {summary['total_s']:.0f}s; results: {args.out_dir / 'summary.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
