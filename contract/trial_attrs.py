"""How a trial's config, provenance and results are written to the study.

Every name a reader (``tuner status``, ``tuner export``, the dashboard) relies on is defined here,
so the writer (the worker) and the readers cannot drift apart. Values are JSON-safe: NaN becomes
``None``.
"""

from __future__ import annotations

from collections.abc import Mapping
import math
import os
import socket
from typing import Any

import numpy as np
import optuna

from contract.config import TrainConfig

CONFIG = "config"  # the full TrainConfig dict the trial trained (sampled + fixed values)
WORKER = "worker"  # {"host", "pid", "gpu"[, "slurm"]}: who runs it; status shows host and age
PROVENANCE = "provenance"  # device, library versions, python: from worker.training.device.describe
MIOU = "miou"  # final validation mean IoU over classes 1-4 (also the trial's value)
PER_CLASS_IOU = "per_class_iou"  # {"1": iou, ..., "4": iou}; None for a class absent in both
EPOCHS_RUN = "epochs_run"
BEST_EPOCH = "best_epoch"  # 1-based
LEARNING_RATES = "learning_rates"  # the learning rate of each epoch run (ReduceLROnPlateau's doing)
WALL_TIME_S = "wall_time_s"
N_TRAIN = "n_train"
N_VAL = "n_val"
MODEL_ARTIFACT = "model_artifact_id"  # optuna artifact id of the saved .keras model, if uploaded
ERROR = "error"  # one line, on FAIL
INTERRUPTED = "interrupted"  # signal name, on FAIL by SIGTERM/SIGINT
RETRY_OF = "retry_of"  # trial number this one re-runs (interrupted trials)
#: ``tuner confirm``: the search trial whose configuration this trial re-runs with another seed.
#: Such a trial does not count towards the search budget and is never pruned (worker/budget.py).
CONFIRMS = "confirms"
CONFIRM_SEED = "confirm_seed"  # the training config's ``seed`` it runs with (split and initialisation)
CONFUSION_MATRIX = "confusion_matrix"  # 5x5 pixel counts [truth][prediction] of the validation split
PREVIEW_ARTIFACT = "preview_artifact_id"  # PNG grid of validation images: image, truth, prediction
#: Class colours (RGB) of that PNG, which the report's legend repeats: 0 background .. 4 big rock.
CLASS_COLOURS = ((0, 0, 0), (166, 118, 29), (117, 112, 179), (230, 171, 2), (231, 41, 138))
N_PARAMS = "n_params"  # the model's parameter count (Keras count_params; the "params" objective)
LATENCY_MS = "inference_ms_per_image"  # measured when the study's cost is "latency"; the worker's device
PHASE = "phase"  # what the running trial does now: one of PHASES (written as it changes)
PHASES = ("loading data", "building", "compiling", "training", "evaluating", "saving")


def worker_identity(gpu: int | None) -> dict[str, Any]:
    identity: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid(), "gpu": gpu}
    task = slurm_task(os.environ)
    if task is not None:
        identity["slurm"] = task
    return identity


def slurm_task(environ: Mapping[str, str]) -> str | None:
    """The Slurm task this process runs as (``ARRAYJOB_TASK``, or the job id outside an array).

    Recorded with each trial so that a stuck or unwanted trial names the task to ``scancel``;
    ``None`` outside Slurm.
    """
    array, index = environ.get("SLURM_ARRAY_JOB_ID"), environ.get("SLURM_ARRAY_TASK_ID")
    if array and index:
        return f"{array}_{index}"
    return environ.get("SLURM_JOB_ID") or None


def record_start(
    trial: optuna.Trial, config: TrainConfig, identity: dict[str, Any], provenance: dict[str, Any]
) -> None:
    trial.set_user_attr(CONFIG, config.to_dict())
    trial.set_user_attr(WORKER, identity)
    trial.set_user_attr(PROVENANCE, provenance)


def record_result(trial: optuna.Trial, result: Any) -> None:
    """Write a :class:`worker.training.result.TrainResult` (duck-typed to keep TensorFlow out)."""
    trial.set_user_attr(MIOU, json_safe(result.best_miou))
    trial.set_user_attr(PER_CLASS_IOU, {str(c): json_safe(v) for c, v in result.per_class_iou.items()})
    trial.set_user_attr(EPOCHS_RUN, int(result.epochs_run))
    trial.set_user_attr(BEST_EPOCH, int(result.best_epoch) + 1)
    history = getattr(result, "history", None)
    if history:
        trial.set_user_attr(LEARNING_RATES, [json_safe(float(row.get("lr", math.nan))) for row in history])
    trial.set_user_attr(WALL_TIME_S, round(float(result.wall_time_s), 3))
    trial.set_user_attr(N_TRAIN, int(result.n_train))
    trial.set_user_attr(N_VAL, int(result.n_val))
    n_params = getattr(result, "n_params", None)
    if n_params is not None:
        trial.set_user_attr(N_PARAMS, int(n_params))
    latency = getattr(result, "inference_ms_per_image", None)
    if latency is not None:
        trial.set_user_attr(LATENCY_MS, json_safe(float(latency)))
    confusion = getattr(result, "confusion_matrix", None)
    if confusion is not None:
        trial.set_user_attr(CONFUSION_MATRIX, [[int(n) for n in row] for row in confusion])


def cost_of(result: Any, objective: str) -> float | None:
    """A :class:`TrainResult`'s value of a cost objective (``params`` or ``latency``)."""
    if objective == "params":
        value = getattr(result, "n_params", None)
    elif objective == "latency":
        value = getattr(result, "inference_ms_per_image", None)
    else:
        raise ValueError(f"unknown cost objective {objective!r}")
    return None if value is None else float(value)


def lr_schedule_of(trial: optuna.trial.FrozenTrial) -> list[float] | None:
    """The learning rate of each epoch up to the trial's best one: what retraining on all the data
    replays (``TrainConfig.lr_schedule``); ``None`` for a trial from a worker that did not record it."""
    rates, best = trial.user_attrs.get(LEARNING_RATES), trial.user_attrs.get(BEST_EPOCH)
    if not isinstance(rates, list) or not isinstance(best, int) or not 1 <= best <= len(rates):
        return None
    schedule = rates[:best]
    if not all(
        isinstance(r, (int, float)) and not isinstance(r, bool) and math.isfinite(r) and r > 0 for r in schedule
    ):
        return None
    return [float(r) for r in schedule]


def confirmation_of(user_attrs: dict[str, Any]) -> tuple[int, int] | None:
    """(confirmed trial number, seed) of a ``tuner confirm`` trial; ``None`` for a search trial."""
    confirms, seed = user_attrs.get(CONFIRMS), user_attrs.get(CONFIRM_SEED)
    if isinstance(confirms, int) and isinstance(seed, int):
        return confirms, seed
    return None


def confirmation_attrs(user_attrs: dict[str, Any]) -> dict[str, Any]:
    """The confirmation marks of ``user_attrs`` (empty for a search trial): a retry must keep them."""
    return {key: user_attrs[key] for key in (CONFIRMS, CONFIRM_SEED) if key in user_attrs}


def config_of(trial: optuna.trial.FrozenTrial) -> dict[str, Any] | None:
    """The config a finished trial trained, as recorded by its worker."""
    value = trial.user_attrs.get(CONFIG)
    return dict(value) if isinstance(value, dict) else None


def per_class_iou_of(trial: optuna.trial.FrozenTrial) -> dict[str, float | None]:
    """The trial's IoU per class (``{"1": iou, ...}``) as recorded; a value that is not a finite
    number reads as ``None`` (n/a), since plain Optuna or a hand edit may have written anything."""
    value = trial.user_attrs.get(PER_CLASS_IOU)
    if not isinstance(value, dict):
        return {}
    return {str(c): _finite(v) for c, v in value.items()}


def confusion_matrix_of(trial: optuna.trial.FrozenTrial) -> list[list[float]] | None:
    """The trial's confusion matrix, or ``None`` when none is recorded or what is recorded is not
    a square table (2 to 32 classes) of finite, non-negative pixel counts."""
    rows = trial.user_attrs.get(CONFUSION_MATRIX)
    if not isinstance(rows, list) or not 2 <= len(rows) <= 32:
        return None
    if not all(isinstance(row, list) and len(row) == len(rows) for row in rows):
        return None
    counts = [[_finite(n) for n in row] for row in rows]
    if any(n is None or n < 0 for row in counts for n in row):
        return None
    return counts  # type: ignore[return-value]


def worker_of(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """``{"host": str | None, "pid": int | None, "gpu": int | None}`` of the trial's worker; a
    field of another type (a hand edit) reads as ``None``."""
    value = trial.user_attrs.get(WORKER)
    value = value if isinstance(value, dict) else {}
    host, pid, gpu = value.get("host"), value.get("pid"), value.get("gpu")
    return {"host": host if isinstance(host, str) else None, "pid": _integer(pid), "gpu": _integer(gpu)}


def _finite(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _integer(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def json_safe(value: Any) -> Any:
    """``value`` as JSON holds it: NaN/inf become ``None``, numpy scalars Python numbers, tuples
    lists, through nested dicts and lists.

    One function for both writers of results: :func:`record_result` passes plain Python floats
    (only NaN/inf -> ``None`` changes them), ``worker.training.result.TrainResult.to_dict`` a
    whole result (nested dicts and lists that may hold numpy scalars).
    """
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value
