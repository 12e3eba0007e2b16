"""Both Keras backends train a tiny config end to end: TensorFlow (default) and JAX.

Each backend runs in its own subprocess (``KERAS_BACKEND`` is read once, at ``import keras``).
The JAX run must not touch the ``tf.data`` pipeline: its data path is numpy.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import subprocess
import sys

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

SCRIPT = r"""
import json, sys
from contract.config import TrainConfig
from contract.data import load_npz
from contract.synth import write_npz
import worker.training.batches
numpy_path_without_tf = "tensorflow" not in sys.modules
from worker.training.train import Trainer

write_npz(sys.argv[1], 20, seed=1, n_aliens=0)
data = load_npz(sys.argv[1])
config = TrainConfig(model="unet", base_filters=4, depth=2, batch_size=8, epochs=2,
                     validation_fraction=0.25, augment_flips=True, tta=True,
                     mixed_precision="off", seed=3)
trainer = Trainer()
phases = []
first = trainer.train(config, data, verbose=False, phase_callback=phases.append)
again = trainer.train(config, data, verbose=False)
second = trainer.train(config.replace(focal_gamma=2.0, learning_rate=3e-4), data, verbose=False)
import keras
print(json.dumps({
    "backend": keras.backend.backend(),
    "numpy_path_without_tf": numpy_path_without_tf,
    "tf_pipeline_used": "worker.training.pipeline" in sys.modules,
    "miou": [first.best_miou, second.best_miou],
    "reused": [first.timings["reused_model"], second.timings["reused_model"]],
    "repeat_exact": first.history == again.history and first.best_miou == again.best_miou,
    "losses": [[r["loss"] for r in first.history], [r["loss"] for r in again.history]],
    "losses_differ": first.history[0]["loss"] != second.history[0]["loss"],
    "epochs": [first.epochs_run, second.epochs_run],
    "phases": phases,
}))
"""


def _run(backend: str, tmp_path: Path) -> dict:
    if backend == "jax":
        pytest.importorskip("jax")
    env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=str(ROOT), TUNER_COMPILE_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "d.npz")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_tiny_config_trains_and_reuses_on_each_backend(backend: str, tmp_path: Path) -> None:
    out = _run(backend, tmp_path)
    assert out["backend"] == backend
    assert all(0.0 <= m <= 1.0 for m in out["miou"])
    assert out["epochs"] == [2, 2]
    assert out["reused"] == [False, True]
    if backend == "tensorflow":  # on JAX a reused run differs slightly: open, see issue 14 notes
        assert out["repeat_exact"]  # seeded: the same config on a reused model repeats exactly
    assert out["losses_differ"]  # gamma and lr are variables, not constants of the trace
    assert out["phases"] == ["loading data", "building", "compiling", "training", "evaluating"]
    assert out["numpy_path_without_tf"]
    assert out["tf_pipeline_used"] == (backend == "tensorflow")
    if backend == "jax":
        assert any((tmp_path / "cache").iterdir())  # the persistent compilation cache filled
