"""``Trainer``: one per worker process, reusing split data and compiled models across trials.

The point to prove: a reused model trains a new trial's hyperparameters exactly as a fresh
model would (they are variables, not constants traced into the step), and the reuse really
skips building and tracing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from contract import trial_attrs
from contract.config import TrainConfig
from contract.data import load_npz

pytestmark = pytest.mark.slow

TINY = TrainConfig(
    model="unet",
    base_filters=4,
    depth=2,
    batch_size=8,
    epochs=2,
    early_stopping_patience=10,
    reduce_lr_patience=10,
    validation_fraction=0.25,
    augment_flips=False,
    mixed_precision="off",
    seed=3,
)
OTHER = TINY.replace(learning_rate=3e-4, weight_decay=5e-2, focal_gamma=2.0, class_weights="uniform")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory):
    from contract.synth import write_npz

    path: Path = tmp_path_factory.mktemp("data") / "mars.npz"
    write_npz(path, 24, seed=1, n_aliens=0)
    return load_npz(path)


@pytest.fixture(scope="module")
def reused(data):
    """Two trials through one Trainer: TINY, then OTHER on the same compiled model."""
    from worker.training.train import Trainer

    trainer = Trainer()
    phases: list[str] = []
    first = trainer.train(TINY, data, verbose=False, phase_callback=phases.append)
    second = trainer.train(OTHER, data, verbose=False, phase_callback=phases.append)
    return first, second, phases


def test_second_trial_reuses_the_compiled_model_and_the_split(reused) -> None:
    first, second, _ = reused
    assert not first.timings["reused_model"] and not first.timings["reused_data"]
    assert second.timings["reused_model"] and second.timings["reused_data"]
    # Building and tracing are what the reuse skips: the first batch comes much sooner.
    assert second.timings["first_batch_s"] < first.timings["first_batch_s"] / 2


def test_reused_model_trains_new_hyperparameters_exactly_as_a_fresh_one(reused, data) -> None:
    from worker.training.train import train

    _, second, _ = reused
    fresh = train(OTHER, data, verbose=False)  # its own session, built from scratch
    assert not fresh.timings["reused_model"]
    assert second.history == fresh.history
    assert second.best_miou == fresh.best_miou
    assert second.class_weights == fresh.class_weights


def test_hyperparameters_are_not_frozen_into_the_traced_step(reused) -> None:
    first, second, _ = reused
    assert first.history[0]["loss"] != second.history[0]["loss"]  # gamma, weights took effect
    assert second.history[0]["lr"] == pytest.approx(3e-4)


def test_phases_are_reported_in_order_and_compiling_only_when_new(reused) -> None:
    _, _, phases = reused
    assert set(phases) <= set(trial_attrs.PHASES)
    assert phases == [
        "loading data",
        "building",
        "compiling",
        "training",
        "evaluating",
        "loading data",
        "building",
        "training",
        "evaluating",
    ]


def test_another_architecture_builds_a_new_model(reused, data) -> None:
    from worker.training.train import Trainer

    trainer = Trainer()
    trainer.train(TINY, data, verbose=False)
    wider = trainer.train(TINY.replace(base_filters=8), data, verbose=False)
    again = trainer.train(TINY.replace(learning_rate=5e-4), data, verbose=False)
    assert not wider.timings["reused_model"]
    assert again.timings["reused_model"]  # the first model is still cached


def test_worker_callbacks_keep_keras_asynchronous_dispatch(data, monkeypatch) -> None:
    """No callback of the worker's ``fit`` may hook the end of every batch: Keras then turns each
    step's logs into floats, which on JAX waits for the device after every step (on an H100 the
    worker trained 24% slower than a plain ``fit``). Keras' own test, per callback."""
    import keras

    from worker.training.train import Trainer

    seen: list[keras.callbacks.Callback] = []
    fit = keras.Model.fit

    def spy(self, *args, **kwargs):
        seen.extend(kwargs.get("callbacks") or [])
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", spy)
    phases: list[str] = []
    Trainer().train(TINY, data, verbose=False, epoch_callback=lambda epoch, miou: None, phase_callback=phases.append)
    assert len(seen) >= 4
    base = keras.callbacks.Callback
    for callback in seen:
        if getattr(callback, "async_safe", False):
            continue
        for hook in ("on_batch_end", "on_train_batch_end"):
            assert getattr(type(callback), hook) is getattr(base, hook), (type(callback), hook)
    assert "training" in phases
