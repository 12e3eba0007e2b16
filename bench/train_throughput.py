"""Training throughput: the worker's input pipeline and compile settings vs a plain ``fit``.

For each model (Multipath UNet, plain UNet) and the same synthetic images, the same batch size
and the same initial weights, each variant trains for ``--epochs`` timed epochs after one
warm-up epoch (the warm-up absorbs graph tracing / XLA compilation; its time is reported apart):

* ``baseline``: ``model.fit(x_numpy, y_numpy, batch_size=B, shuffle=True)`` on the four flips
  materialised in memory (so an epoch sees the same 4N images), float32, Keras' default
  ``jit_compile="auto"`` (which is *off* on CPU), no op determinism;
* ``pipeline``: what ``worker.training.train.train`` does: ``worker.training.pipeline.make_train_dataset`` (lazy
  flips, shuffle, parallel map, prefetch), the device plan's precision policy (mixed float16 on a
  GPU, float32 on CPU), op determinism on, ``jit_compile=False``;
* ``pipeline_xla``: the same with ``jit_compile=True`` (``TrainConfig.jit_compile``). Keras 3
  silently turns XLA off while TensorFlow op determinism is on (``model_supports_jit``), so
  ``worker.training.train.train`` switches determinism off for such configs, and so does this row (the
  ``xla_active`` column confirms XLA compiled).

All variants use the worker's loss (focal, class weights from the training masks), AdamW and the
foreground mean-IoU metric, so only the input path and the compile settings differ.

**Input wait** is estimated the way the ``tf.data`` performance guide suggests: the same compiled
model is run for the same number of steps on one batch cached in memory (no input work at all);
``wait share = 1 - t_cached / t_real``, clipped at 0 (timing noise can make it slightly
negative; the raw value is in the JSON). For the pipeline variants the time to iterate the
pipeline alone for one epoch is also reported: with prefetching it overlaps the model step, so
it bounds the wait from above rather than measuring it.

Sizes are flags, so the same command runs unchanged on a GPU (e.g. ``--images 2048
--base-filters 32 --batch 128``). On the 2-core CPU machine other processes share the cores and
the numbers are noisy: run it twice before believing a 10% difference.

    python bench/train_throughput.py                 # CPU defaults, ~3-4 minutes
    python bench/train_throughput.py --smoke         # seconds, tiny model
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
from pathlib import Path
import platform
import sys
import time
from typing import Any
import warnings

from _report import write_result  # bench/ is on sys.path when a script runs
import numpy as np

VARIANTS = ("baseline", "pipeline", "pipeline_xla")
GOAL_RATIO = 1.5


def make_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic challenge-format images in [0, 1] (float32) and masks (uint8), no aliens."""
    from contract.synth import generate

    train = generate(n, seed, n_aliens=0)["training_set"]
    return (train[:, 0] / 255.0).astype(np.float32), train[:, 1].astype(np.uint8)


def flipped(images: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The four flips materialised, in the pipeline's order: none, horizontal, vertical, both."""

    def four(a: np.ndarray) -> np.ndarray:
        return np.concatenate([a, a[:, :, ::-1], a[:, ::-1, :], a[:, ::-1, ::-1]])

    return four(images)[..., None], four(masks).astype(np.int32)


def config_for(model: str, base_filters: int, batch: int, jit: bool) -> Any:
    """A ``TrainConfig`` at ``base_filters`` with the seed's width ratios for the bottleneck."""
    from contract.config import TrainConfig

    return TrainConfig(
        model=model,
        base_filters=base_filters,
        depth=3,
        conventional_filters=8 * base_filters,
        residual_filters=base_filters,
        multiscale_filters=8 * base_filters,
        context_filters=base_filters,
        batch_size=batch,
        jit_compile=jit,
        epochs=1,
    )


def measure_variant(
    variant: str, model_name: str, images: np.ndarray, masks: np.ndarray, args: argparse.Namespace, policy: str
) -> dict[str, Any]:
    """Build, warm up and time one variant; returns images/s, step times and the wait share."""
    import keras

    from worker.training.losses import class_weights_from_masks, focal_loss
    from worker.training.metrics import MeanIoUForeground
    from worker.training.model import build_model
    from worker.training.pipeline import make_train_dataset, steps_per_epoch
    from worker.training.train import set_op_determinism

    ours = variant != "baseline"
    config = config_for(model_name, args.base_filters, args.batch, jit=variant == "pipeline_xla")
    # As worker.training.train.train does: deterministic ops unless the config asks for XLA.
    deterministic = not config.jit_compile
    keras.utils.clear_session()
    keras.utils.set_random_seed(args.seed)
    set_op_determinism(deterministic)
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(policy if ours else "float32")
    try:
        model = build_model(config)
        weights = class_weights_from_masks(masks)
        compile_kwargs: dict[str, Any] = {"jit_compile": config.jit_compile} if ours else {}
        with warnings.catch_warnings():  # "Model doesn't support jit_compile": see xla_active
            warnings.simplefilter("ignore", UserWarning)
            model.compile(
                optimizer=keras.optimizers.AdamW(learning_rate=1e-3, weight_decay=1e-3),
                loss=focal_loss(0.5, weights),
                metrics=[MeanIoUForeground()],
                **compile_kwargs,
            )
        steps = steps_per_epoch(len(images), args.batch, augment_flips=True)
        n_epoch = 4 * len(images)
        pipeline = make_train_dataset(images, masks, args.batch, seed=args.seed, augment_flips=True)
        if ours:

            def fit(epochs: int) -> None:
                model.fit(pipeline, epochs=epochs, verbose=0, shuffle=False)
        else:
            x4, y4 = flipped(images, masks)

            def fit(epochs: int) -> None:
                model.fit(x4, y4, batch_size=args.batch, epochs=epochs, verbose=0, shuffle=True)

        t = time.perf_counter()
        fit(1)
        warmup_s = time.perf_counter() - t
        t = time.perf_counter()
        fit(args.epochs)
        timed_s = time.perf_counter() - t

        # Same model, same number of steps, one batch served from memory: no input work.
        cached = pipeline.take(1).cache().repeat(steps).prefetch(1)
        model.fit(cached.take(2), epochs=1, verbose=0, shuffle=False)  # absorbs a retrace, if any
        t = time.perf_counter()
        for _ in range(args.epochs):
            model.fit(cached, epochs=1, verbose=0, shuffle=False)
        cached_s = time.perf_counter() - t

        input_only_ms = None
        if ours:
            t = time.perf_counter()
            for _ in pipeline:
                pass
            input_only_ms = (time.perf_counter() - t) / steps * 1e3
    finally:
        keras.mixed_precision.set_global_policy(previous)
        set_op_determinism(False)

    raw_wait = 1.0 - cached_s / timed_s
    return {
        "variant": variant,
        "model": model_name,
        "params": int(model.count_params()),
        "jit_compile": bool(config.jit_compile) if ours else "auto (off on CPU)",
        "policy": policy if ours else "float32",
        "op_determinism": deterministic,
        "xla_active": bool(getattr(model, "jit_compile", False)),
        "images_per_epoch": n_epoch,
        "steps_per_epoch": steps,
        "warmup_s": warmup_s,
        "timed_s": timed_s,
        "images_per_s": n_epoch * args.epochs / timed_s,
        "step_ms": timed_s / (steps * args.epochs) * 1e3,
        "cached_step_ms": cached_s / (steps * args.epochs) * 1e3,
        "input_only_step_ms": input_only_ms,
        "input_wait_share_raw": raw_wait,
        "input_wait_share": max(0.0, raw_wait),
    }


def print_table(result: dict[str, Any]) -> None:
    print(
        f"\n{result['images']} images x 4 flips = {4 * result['images']} per epoch, batch "
        f"{result['batch']}, {result['epochs']} timed epoch(s) after 1 warm-up; "
        f"device {result['device']}"
    )
    print(
        f"{'model':10} {'variant':19} {'XLA':>4} {'params':>8} {'img/s':>8} {'vs base':>8} "
        f"{'step ms':>8} {'wait %':>7} {'input ms':>9} {'warm-up s':>9}"
    )
    for r in result["rows"]:
        inp = "-" if r["input_only_step_ms"] is None else f"{r['input_only_step_ms']:.1f}"
        print(
            f"{r['model']:10} {r['variant']:19} {'on' if r['xla_active'] else 'off':>4} "
            f"{r['params']:>8} {r['images_per_s']:>8.1f} "
            f"{r['ratio_vs_baseline']:>7.2f}x {r['step_ms']:>8.1f} "
            f"{100 * r['input_wait_share']:>6.1f}% {inp:>9} {r['warmup_s']:>9.1f}"
        )
    print(
        "wait % = 1 - (step time on one cached batch) / (step time on the real input); "
        "input ms = iterating the input pipeline alone, per step (overlaps with compute)"
    )
    for line in result["verdict"]:
        print(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=64, help="training images (x4 flips per epoch)")
    parser.add_argument("--base-filters", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs after the warm-up")
    parser.add_argument("--models", default=None, help="default multipath,unet (unet in --smoke)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.smoke:
        args.images, args.base_filters, args.batch, args.epochs = 8, 4, 8, 1
        args.models = args.models or "unet"
    args.models = args.models or "multipath,unet"
    variants = [v.strip() for v in args.variants.split(",")]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or "baseline" not in variants:
        parser.error(f"--variants must include baseline and only {', '.join(VARIANTS)}")

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    from worker.training.device import plan

    gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    device = plan(gpus, None, "auto").device
    images, masks = make_data(args.images, args.seed)
    rows = []
    for model_name in [m.strip() for m in args.models.split(",")]:
        base = None
        for variant in variants:
            row = measure_variant(variant, model_name, images, masks, args, device.policy)
            base = row["images_per_s"] if variant == "baseline" else base
            row["ratio_vs_baseline"] = row["images_per_s"] / base
            print(f"  {model_name:10} {variant:19} {row['images_per_s']:.1f} img/s", flush=True)
            rows.append(row)
    verdict = []
    for model_name in dict.fromkeys(r["model"] for r in rows):
        best = max(
            (r for r in rows if r["model"] == model_name and r["variant"] != "baseline"),
            key=lambda r: r["images_per_s"],
            default=None,
        )
        if best is not None:
            ok = best["ratio_vs_baseline"] >= GOAL_RATIO
            verdict.append(
                f"goal >= {GOAL_RATIO}x baseline, {model_name}: best is {best['variant']} "
                f"at {best['ratio_vs_baseline']:.2f}x -> {'met' if ok else 'NOT met'}"
            )
    result = {
        "benchmark": "train_throughput",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "tensorflow": tf.__version__},
        "device": f"{device.kind} {device.name}, policy {device.policy}",
        "command": " ".join([Path(sys.argv[0]).name] + (sys.argv[1:] if argv is None else argv)),
        "images": args.images,
        "batch": args.batch,
        "epochs": args.epochs,
        "base_filters": args.base_filters,
        "rows": rows,
        "verdict": verdict,
    }
    print_table(result)
    write_result(result, "train_throughput", args.out, default=_json_default)
    return 0


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(type(value).__name__)


if __name__ == "__main__":
    sys.exit(main())
