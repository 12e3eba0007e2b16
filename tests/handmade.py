"""Studies built by hand, for the read side's tests: trials asked and told without training, with the
user attributes written through :mod:`contract.trial_attrs` exactly as a worker writes them."""

from __future__ import annotations

from collections.abc import Iterator
import dataclasses
import datetime

import numpy as np
import optuna
from optuna.trial import TrialState
import pytest

from contract import trial_attrs
from contract.study_spec import StudySpec
import storage
from tuner import readers
from tuner.study import CreateOptions, create_study

FINGERPRINT = "ab" * 32


@dataclasses.dataclass
class FakeResult:
    """The fields of worker.training.result.TrainResult that trial_attrs.record_result reads."""

    best_miou: float
    per_class_iou: dict[int, float | None]
    epochs_run: int = 3
    best_epoch: int = 1
    wall_time_s: float = 12.5
    n_train: int = 48
    n_val: int = 16


class Builder:
    """Adds trials to a study the way a worker would, remembering what it wrote."""

    def __init__(self, url: str, name: str, trials: int = 5) -> None:
        create_study(
            name, CreateOptions(storage_url=url, data=None, fingerprint=FINGERPRINT, space_path=None, trials=trials)
        )
        self.url = url
        self.rdb = storage.open_storage(url, heartbeat_interval=None)
        self.study = optuna.load_study(study_name=name, storage=self.rdb, sampler=optuna.samplers.RandomSampler(seed=0))
        self.spec = StudySpec.of(self.study)
        self.rng = np.random.default_rng(0)
        self.completed: dict[int, tuple[float, dict[str, float | None]]] = {}
        self.reported: dict[int, tuple[int, float]] = {}

    def ask(
        self, host: str = "node-a", pid: int = 101, gpu: int | None = None, epochs: int = 0, record_config: bool = True
    ) -> optuna.Trial:
        trial = self.study.ask()
        config = self.spec.space.sample(trial)
        if record_config:
            trial_attrs.record_start(trial, config, {"host": host, "pid": pid, "gpu": gpu}, {"device": "cpu"})
        else:
            trial.set_user_attr(trial_attrs.WORKER, {"host": host, "pid": pid, "gpu": gpu})
        for step in range(1, epochs + 1):
            value = float(self.rng.uniform(0.1, 0.6))
            trial.report(value, step)
            self.reported[trial.number] = (step, value)
        return trial

    def complete(self, trial: optuna.Trial | None = None, **kwargs) -> optuna.Trial:
        trial = trial or self.ask(epochs=2, **kwargs)
        per_class = {c: float(self.rng.uniform(0.2, 0.9)) for c in (1, 2, 3)}
        per_class[4] = None  # a class absent in both truth and prediction
        miou = float(np.mean([v for v in per_class.values() if v is not None]))
        trial_attrs.record_result(trial, FakeResult(best_miou=miou, per_class_iou=per_class))
        self.study.tell(trial, miou)
        self.completed[trial.number] = (miou, {str(c): v for c, v in per_class.items()})
        return trial

    def end(self, state: TrialState, **kwargs) -> optuna.Trial:
        trial = self.ask(epochs=1, **kwargs)
        self.study.tell(trial, state=state)
        return trial

    def best(self) -> tuple[int, float]:
        number = max(self.completed, key=lambda n: self.completed[n][0])
        return number, self.completed[number][0]

    def close(self) -> None:
        self.rdb.engine.dispose()


def mixed_study(url: str, name: str = "mars") -> Builder:
    """3 COMPLETE, 1 PRUNED, 1 FAIL, 2 RUNNING (two hosts), 1 WAITING."""
    b = Builder(url, name)
    for _ in range(3):
        b.complete()
    b.end(TrialState.PRUNED)
    b.end(TrialState.FAIL)
    b.ask(host="node-a", pid=11, gpu=0, epochs=3).set_user_attr(trial_attrs.PHASE, "training")
    b.ask(host="node-b", pid=22, gpu=1, epochs=1)
    b.study.enqueue_trial({"learning_rate": 3e-4})
    return b


@pytest.fixture(scope="module")
def mixed(pg_schema_module_url) -> Iterator[tuple[Builder, datetime.datetime]]:
    """``mixed_study``'s "mars", built once for the tests that only read it; when its build began."""
    began = readers.utc_now()
    b = mixed_study(pg_schema_module_url)
    yield b, began
    b.close()
