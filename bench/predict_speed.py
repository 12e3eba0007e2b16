"""``worker predict`` against a plain ``model.predict``: throughput, peak memory, cross-backend.

Three questions (issue 21):

1. **Throughput.** The same saved model, the same images: ``predict_file`` (what ``worker
   predict`` runs: reads the ``.npz`` a batch at a time, pads the last batch, argmax, writes
   ``masks``) against ``model.predict(x, batch_size=B)`` + argmax on the images already in memory
   as float32 (reading and writing are not in the baseline). With flip TTA the baseline is
   :func:`worker.training.batches.flip_tta_predict` (four plain ``model.predict`` calls over the
   whole set, as trials are scored). Both start from a freshly loaded model, so both include
   their first call's tracing; ``--repeat`` alternates the two and the best time of each
   counts. ratio = baseline seconds / predict seconds (goal >= 0.95).
2. **Peak RSS** of ``worker predict`` as a user runs it (a subprocess, ``ru_maxrss`` from
   ``wait4``) on ``--rss-images`` images (default 20,000, float64 as in the challenge file) and on
   a tenth of them, with ``--probabilities``: memory must not grow with the probabilities
   (N x 80 KiB as float16), only with the uint8 masks (N x 8 KiB).
3. **Cross-backend round trip.** A model saved on TensorFlow predicts on JAX and one saved on JAX
   predicts on TensorFlow (each backend in its own process); float32 probabilities compared:
   bit-identical masks or the largest absolute difference.

    python bench/predict_speed.py            # ~10 min on 2 loaded CPU cores
    python bench/predict_speed.py --smoke    # under a minute
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

from _report import write_result  # bench/ is on sys.path when a script runs
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GOAL_RATIO = 0.95

_ROUND_TRIP = """
import sys
import numpy as np
from worker.training.backend import name
from worker.training.saved import ModelInfo, load_model, save_model
from worker.training.model import build_model
from contract.config import TrainConfig
import json
mode, model_path, x_path, out_path, config = sys.argv[1:]
if mode == "save":
    save_model(build_model(TrainConfig.from_dict(json.loads(config))), model_path, ModelInfo())
model = load_model(model_path)
np.save(out_path, np.asarray(model.predict(np.load(x_path), batch_size=16, verbose=0), np.float32))
print(name())
"""


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1024, help="images for the throughput runs")
    parser.add_argument("--base-filters", type=int, default=8)
    parser.add_argument("--model", default="multipath", choices=("multipath", "unet"))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--rss-images", type=int, default=20_000)
    parser.add_argument(
        "--parts",
        default="throughput,rss,round_trip",
        help="which measurements (comma-separated): throughput, rss, round_trip",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    if args.smoke:
        args.images, args.base_filters, args.repeat, args.rss_images, args.batch = 48, 4, 1, 200, 16

    from contract.config import TrainConfig

    width = args.base_filters
    config = TrainConfig(
        model=args.model,
        base_filters=width,
        depth=3,
        conventional_filters=8 * width,
        residual_filters=width,
        multiscale_filters=8 * width,
        context_filters=width,
        mixed_precision="off",
    )
    with tempfile.TemporaryDirectory(prefix="predict-bench-") as tmp:
        work = Path(tmp)
        model_path, n_params = _save_model(config, work / "model.keras")
        data = work / "images.npz"
        images = _write_images(data, args.images, seed=0)
        parts = set(args.parts.split(","))
        rows = (
            [_throughput(model_path, data, images, tta, args.batch, args.repeat) for tta in (False, True)]
            if "throughput" in parts
            else []
        )
        sizes = sorted({max(args.rss_images // 10, 1), args.rss_images})
        rss = [_peak_rss(model_path, work, n, args.batch) for n in sizes] if "rss" in parts else []
        round_trip = _round_trip(config, model_path, images[:64], work) if "round_trip" in parts else []

    verdict = [
        f"TTA {'on' if r['tta'] else 'off'}: ratio {r['ratio']:.3f} (goal >= {GOAL_RATIO}): "
        f"{'met' if r['ratio'] >= GOAL_RATIO else 'missed'}"
        for r in rows
    ]
    result = {
        "benchmark": "predict_speed",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "load_before": load_before,
            "load_after": os.getloadavg(),
        },
        "model": config.model,
        "base_filters": width,
        "params": n_params,
        "batch": args.batch,
        "images": args.images,
        "rows": rows,
        "rss": rss,
        "round_trip": round_trip,
        "verdict": verdict,
    }
    _print(result)
    write_result(result, "predict_speed", args.out)
    return result


def _save_model(config: Any, path: Path) -> tuple[Path, int]:
    import keras

    from worker.training.model import build_model
    from worker.training.saved import ModelInfo, save_model

    keras.utils.set_random_seed(0)
    model = build_model(config)
    save_model(model, path, ModelInfo(config=config.to_dict()))
    return path, int(model.count_params())


def _write_images(path: Path, n: int, seed: int) -> np.ndarray:
    """A challenge-style ``test_set`` (float64 pixels 0..255) in batches; returns the float32 [0, 1]
    images the baseline predicts (for the small throughput set only)."""
    from contract.npz_stream import NpzWriter
    from contract.synth import generate

    kept = []
    with NpzWriter(path) as writer, writer.stream("test_set", (n, 64, 128), np.float64) as sink:
        for start in range(0, n, 1000):
            k = min(1000, n - start)
            chunk = generate(k, seed + start, n_aliens=0)["training_set"][:, 0].astype(np.float64)
            sink.write(chunk)
            if n <= 5000:
                kept.append(chunk)
    return (np.concatenate(kept) / 255.0).astype(np.float32) if kept else np.zeros((0, 64, 128), np.float32)


def _throughput(model_path: Path, data: Path, images: np.ndarray, tta: bool, batch: int, repeat: int) -> dict[str, Any]:
    from worker.predict import predict_file
    from worker.training.batches import flip_tta_predict
    from worker.training.saved import load_model

    baseline, worker = [], []
    for _ in range(repeat):
        model = load_model(model_path)
        start = time.perf_counter()
        if tta:
            probs = flip_tta_predict(model, images, batch)
        else:
            probs = model.predict(images[..., None], batch_size=batch, verbose=0)
        expected = np.argmax(probs, axis=-1).astype(np.uint8)
        baseline.append(time.perf_counter() - start)
        del model, probs
        out = data.with_name(f"pred-{tta}.npz")
        summary = predict_file([model_path], data, out, tta=tta, batch=batch, say=lambda line: None)
        worker.append(summary.seconds)
        with np.load(out) as npz:
            same = float(np.mean(npz["masks"] == expected))
    t_base, t_worker = min(baseline), min(worker)
    return {
        "tta": tta,
        "baseline_s": t_base,
        "predict_s": t_worker,
        "baseline_images_per_s": len(images) / t_base,
        "predict_images_per_s": len(images) / t_worker,
        "ratio": t_base / t_worker,
        "masks_equal_share": same,
        "all_baseline_s": baseline,
        "all_predict_s": worker,
    }


def _peak_rss(model_path: Path, work: Path, n: int, batch: int) -> dict[str, Any]:
    data = work / f"rss-{n}.npz"
    _write_images(data, n, seed=1)
    out = work / f"rss-{n}-pred.npz"
    started = time.perf_counter()
    logs = work / "rss.log"
    with open(logs, "w+") as log:
        proc = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "worker"),
                "predict",
                "--model",
                str(model_path),
                "--data",
                str(data),
                "-o",
                str(out),
                "--no-tta",
                "--probabilities",
                "--batch",
                str(batch),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        peak_kib = _watch_peak_rss(proc)
        log.seek(0)
        stdout = stderr = log.read()
    if proc.returncode != 0:
        raise SystemExit(f"worker predict failed on {n} images: {stderr[-2000:]}")
    seconds = time.perf_counter() - started
    result = {
        "images": n,
        "peak_rss_mib": peak_kib / 1024,
        "wall_s": seconds,
        "input_mib": data.stat().st_size / 2**20,
        "output_mib": out.stat().st_size / 2**20,
        "probabilities_mib": n * 64 * 128 * 5 * 2 / 2**20,
        "masks_mib": n * 64 * 128 / 2**20,
        "line": next((line for line in stdout.splitlines() if line.startswith("predicted")), ""),
    }
    data.unlink()
    out.unlink()
    return result


def _watch_peak_rss(proc: subprocess.Popen) -> int:
    """The child's peak resident set (KiB): ``VmHWM`` of ``/proc/PID/status``, read every 0.1 s
    until it exits (the high-water mark only grows, so the last reading is the peak up to then).

    Not ``ru_maxrss`` from ``wait4``: Linux carries the parent's resident set into a child's
    ``ru_maxrss`` across fork and exec, and this parent holds TensorFlow and the images.
    """
    peak = 0
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]))
        except (FileNotFoundError, ProcessLookupError):
            pass
        time.sleep(0.1)
    return peak


def _round_trip(config: Any, tf_model: Path, images: np.ndarray, work: Path) -> list[dict[str, Any]]:
    """TensorFlow -> JAX and JAX -> TensorFlow, each backend in a fresh process."""
    import json

    x = work / "x.npy"
    np.save(x, images[..., None])
    jax_model = work / "jax.keras"
    cfg = json.dumps(config.to_dict())
    runs = {}
    for tag, backend, mode, model in (
        ("tf-saved-on-tf", "tensorflow", "load", tf_model),
        ("tf-saved-on-jax", "jax", "load", tf_model),
        ("jax-saved-on-jax", "jax", "save", jax_model),
        ("jax-saved-on-tf", "tensorflow", "load", jax_model),
    ):
        out = work / f"{tag}.npy"
        env = {**os.environ, "KERAS_BACKEND": backend, "TUNER_COMPILE_CACHE": "off"}
        done = subprocess.run(
            [sys.executable, "-c", _ROUND_TRIP, mode, str(model), str(x), str(out), cfg],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=600,
        )
        if done.returncode != 0:
            raise SystemExit(f"{tag}: {done.stderr[-2000:]}")
        runs[tag] = np.load(out)
    rows = []
    for saved, same_backend, other in (
        ("tensorflow", "tf-saved-on-tf", "tf-saved-on-jax"),
        ("jax", "jax-saved-on-jax", "jax-saved-on-tf"),
    ):
        a, b = runs[same_backend], runs[other]
        rows.append(
            {
                "saved_on": saved,
                "predicted_on": "jax" if saved == "tensorflow" else "tensorflow",
                "images": len(a),
                "bit_identical_probabilities": bool(np.array_equal(a, b)),
                "max_abs_probability_diff": float(np.abs(a - b).max()),
                "masks_identical": bool(np.array_equal(a.argmax(-1), b.argmax(-1))),
                "mask_pixels_differing": int(np.sum(a.argmax(-1) != b.argmax(-1))),
            }
        )
    return rows


def _print(result: dict[str, Any]) -> None:
    print(
        f"model {result['model']} base {result['base_filters']} ({result['params']:,} params), "
        f"{result['images']} images, batch {result['batch']}"
    )
    print(
        f"{'TTA':>4} {'baseline s':>11} {'predict s':>10} {'base img/s':>11} {'pred img/s':>11} {'ratio':>6} "
        f"{'masks equal':>12}"
    )
    for r in result["rows"]:
        print(
            f"{'on' if r['tta'] else 'off':>4} {r['baseline_s']:>11.2f} {r['predict_s']:>10.2f} "
            f"{r['baseline_images_per_s']:>11.1f} {r['predict_images_per_s']:>11.1f} {r['ratio']:>6.3f} "
            f"{r['masks_equal_share']:>12.6f}"
        )
    for r in result["rss"]:
        print(
            f"peak RSS, {r['images']:,} images with --probabilities: {r['peak_rss_mib']:.0f} MiB "
            f"(probabilities written: {r['probabilities_mib']:.0f} MiB, masks {r['masks_mib']:.0f} MiB; "
            f"{r['wall_s']:.0f}s)"
        )
    for r in result["round_trip"]:
        print(
            f"saved on {r['saved_on']}, predicted on {r['predicted_on']}: masks identical {r['masks_identical']} "
            f"({r['mask_pixels_differing']} pixels differ), largest probability difference "
            f"{r['max_abs_probability_diff']:.3g}, bit-identical {r['bit_identical_probabilities']}"
        )
    for line in result["verdict"]:
        print(line)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
