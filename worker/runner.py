"""The worker loop: pull trials from a shared study and train each one.

One process per GPU, any number of machines, one study. The loop is ask/tell rather than
``Study.optimize`` because it must (a) enforce a budget counted across all workers, (b) report
per-class IoU and provenance, (c) turn SIGTERM into a cleanly failed and re-queued trial, and
(d) ride out database outages. Optuna only wires heartbeats into ``optimize``, so this loop runs
them itself (:class:`storage.Heartbeat`) and fails stale trials before every ask.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
import contextlib
import math
from pathlib import Path
import signal
import sys
import tempfile
import threading
import traceback
from types import FrameType
from typing import Any
import warnings

import optuna
from optuna.trial import TrialState

from contract import report
from contract.artifacts import ArtifactDirError, open_artifact_store
from contract.data import MarsData, load_npz
from contract.errors import TunerError
from contract.study_spec import SpecError, StudySpec
import storage
from storage.retry import with_db_retry
from worker.budget import ask_within_budget, budget_lock

EXIT_OK = 0
EXIT_FAILURES = 1
WAIT_POLL_S = 10.0


class RunnerError(TunerError, RuntimeError):
    """The worker cannot join the study; one line for the user."""


class Interrupted(BaseException):
    """SIGTERM/SIGINT during training.

    A ``BaseException`` (like ``KeyboardInterrupt``) so that no ``except Exception`` inside
    Keras or our own code swallows it on the way out of ``fit``.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class SignalGuard:
    """Turn SIGTERM/SIGINT into "finish cleanly".

    Outside training a signal only asks the loop to stop before the next trial. During training
    it raises :class:`Interrupted` in the main thread at once, so a one-hour epoch does not keep
    a stopping container alive; the trial is then failed and re-queued, never left RUNNING.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._training = False
        self._wake = threading.Event()
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> SignalGuard:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    @property
    def stop_requested(self) -> bool:
        return self.signum is not None

    @contextlib.contextmanager
    def training(self) -> Iterator[None]:
        if self.stop_requested:  # a signal arrived between ask and training
            raise Interrupted(self.signum)  # type: ignore[arg-type]
        self._training = True
        try:
            yield
        finally:
            self._training = False

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Hold signals back during a database call inside training, then act on them.

        Raising in the middle of a transaction would leave the trial's session half-used; the
        database call is short, so the interruption waits for it.
        """
        was_training, self._training = self._training, False
        try:
            yield
        finally:
            self._training = was_training
        if was_training and self.stop_requested:
            self._training = False
            raise Interrupted(self.signum)  # type: ignore[arg-type]

    def sleep(self, seconds: float) -> None:
        """Sleep, but wake up at once on a signal."""
        self._wake.wait(seconds)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        self._wake.set()
        if self._training:
            self._training = False  # raise once; a second signal during cleanup only stops
            raise Interrupted(signum)


def run_worker(
    *,
    study_name: str,
    data_path: Path,
    storage_url: str | None,
    gpu: int | None = None,
    max_trials: int | None = None,
    max_failures: int = 3,
    artifact_dir: Path | None = None,
    verbose: bool = True,
) -> int:
    """Join ``study_name`` and run trials until its budget is reached; return an exit code.

    Raises:
        RunnerError: no such study, or the local data differ from the study's.
        storage.StorageError: database unreachable or without schema.
        contract.data.DataError: the local data file is invalid.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

    identity = report.worker_identity(gpu)
    say = _printer(f"[{identity['host']}:{identity['pid']}]")
    url = storage.resolve_url(storage_url)
    spec = _read_spec(url, study_name)

    artifacts = None
    if artifact_dir is not None:  # before loading data or training: a bad path must not cost a trial
        try:
            artifacts = open_artifact_store(artifact_dir, create=True)
        except ArtifactDirError as exc:
            raise RunnerError(str(exc)) from None

    data = load_npz(data_path, load_test=False)  # training needs no test images (~650 MB)
    if data.fingerprint != spec.data_fingerprint:
        raise RunnerError(
            f"refusing to join study {study_name!r}: local data {data_path} has fingerprint "
            f"{data.fingerprint[:12]}, the study was created for {spec.data_fingerprint[:12]}"
        )
    say(f"data {data_path}: {len(data)} images (aliens removed: {data.aliens_removed}), "
        f"fingerprint {data.fingerprint[:12]} matches the study")

    from worker.training.device import DeviceError, configure, describe

    try:
        device = configure(gpu)
    except DeviceError as exc:
        raise RunnerError(str(exc)) from None
    provenance = describe(device)
    say(f"device {device.kind} {device.name}; study {study_name!r} on {storage.mask_url(url)}")

    rdb = storage.open_storage(
        url, heartbeat_interval=spec.heartbeat_interval, grace_period=spec.grace_period,
        max_retry=spec.max_retry,
    )
    study = optuna.load_study(
        study_name=study_name, storage=rdb,
        sampler=spec.make_sampler(f"{identity['host']}:{identity['pid']}:{gpu}"),
        pruner=spec.make_pruner(),
    )
    runner = _Runner(study, rdb, url, spec, data, device, provenance, identity, artifacts, say, verbose)
    outcomes: dict[str, int] = {}
    consecutive_failures = 0
    code = EXIT_OK
    with SignalGuard() as guard:
        while not guard.stop_requested:
            if max_trials is not None and sum(outcomes.values()) >= max_trials:
                say(f"ran --max-trials {max_trials} trial(s); stopping")
                break
            trial = runner.next_trial(guard)
            if trial is None:
                break
            outcome = runner.run_trial(trial, guard)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            consecutive_failures = consecutive_failures + 1 if outcome == "failed" else 0
            if consecutive_failures >= max_failures:
                say(f"{consecutive_failures} trials failed in a row; stopping this worker")
                code = EXIT_FAILURES
                break
        if guard.stop_requested:
            say(f"stopped by {signal.Signals(guard.signum).name}")  # type: ignore[arg-type]
    summary = ", ".join(f"{n} {k}" for k, n in sorted(outcomes.items())) or "no trials"
    say(f"done: {summary}")
    rdb.engine.dispose()
    return code


def _read_spec(url: str, study_name: str) -> StudySpec:
    probe = storage.open_storage(url, heartbeat_interval=None)
    try:
        study = optuna.load_study(study_name=study_name, storage=probe)
    except KeyError:
        raise RunnerError(
            f"no study {study_name!r} in {storage.mask_url(url)}: create it with `tuner create`"
        ) from None
    finally:
        probe.engine.dispose()
    try:
        return StudySpec.of(study)
    except (SpecError, ValueError) as exc:
        raise RunnerError(str(exc)) from None


class _Runner:
    """State shared by the trials of one worker process."""

    def __init__(
        self,
        study: optuna.Study,
        rdb: optuna.storages.RDBStorage,
        url: str,
        spec: StudySpec,
        data: MarsData,
        device: Any,
        provenance: dict[str, Any],
        identity: dict[str, Any],
        artifacts: Any,
        say: Callable[[str], None],
        verbose: bool,
    ) -> None:
        self.study, self.rdb, self.url, self.spec, self.data = study, rdb, url, spec, data
        self.device, self.provenance, self.identity = device, provenance, identity
        self.trainer: Any = None  # one worker.training.train.Trainer per process: reuses compiled models
        self.artifacts, self.say, self.verbose = artifacts, say, verbose

    # -- asking -----------------------------------------------------------------------------

    def next_trial(self, guard: SignalGuard) -> optuna.Trial | None:
        """Ask for a trial if the shared budget allows; ``None`` when the study is done.

        Counting and asking happen under one database lock, so N workers racing for the last
        trial create exactly one. Queued retries (WAITING) are always taken. When the budget is
        fully allocated but other workers still run trials, wait: one of them may die, and its
        retry needs a worker.
        """
        announced = False
        while not guard.stop_requested:
            trial, counts = with_db_retry(
                lambda: ask_within_budget(self.study, self.rdb, self.url, self.spec.n_trials),
                what="asking for a trial", on_retry=self.say,
            )
            if trial is not None:
                return trial
            finished = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]
            if counts[TrialState.RUNNING] == 0:
                self.say(f"study budget reached: {finished}/{self.spec.n_trials} trials finished")
                return None
            if not announced:
                self.say(f"budget allocated ({finished}/{self.spec.n_trials} finished); waiting for "
                         f"{counts[TrialState.RUNNING]} running trial(s) in case one is retried")
                announced = True
            guard.sleep(min(float(self.spec.heartbeat_interval), WAIT_POLL_S))
        return None

    # -- running ----------------------------------------------------------------------------

    def run_trial(self, trial: optuna.Trial, guard: SignalGuard) -> str:
        """Train one trial and tell the study; returns complete, pruned, failed, interrupted or dropped.

        "dropped": another worker failed this trial as stale meanwhile (this process was frozen
        or cut off from the database for longer than the grace period) and queued its retry;
        whatever this worker still had to write about it is dropped, and the loop goes on.
        """
        try:
            return self._run_trial(trial, guard)
        except optuna.exceptions.UpdateFinishedTrialError:
            self.say(f"trial {trial.number} was finished elsewhere meanwhile (failed as stale by "
                     "another worker, which queued its retry); this worker's result is dropped")
            return "dropped"

    def _run_trial(self, trial: optuna.Trial, guard: SignalGuard) -> str:
        from worker.training.device import with_precision
        from worker.training.train import Trainer, train

        self.trainer = self.trainer or Trainer()

        config = self.spec.space.sample(trial)
        device = with_precision(self.device, config.mixed_precision)
        # Interrupted trials carry RETRY_OF; Optuna's stale-trial retry records "failed_trial".
        retry_of = trial.user_attrs.get(report.RETRY_OF)
        if retry_of is None:
            retry_of = self.rdb.get_trial_system_attrs(trial._trial_id).get("failed_trial")
        self._db(lambda: report.record_start(trial, config, self.identity, self.provenance), "recording the trial")
        params = ", ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
        again = f" (retry of trial {retry_of})" if retry_of is not None else ""
        self.say(f"trial {trial.number} started{again}: {params}")

        def on_epoch(epoch: int, val_miou: float) -> None:
            step = epoch + 1
            value = val_miou if math.isfinite(val_miou) else 0.0
            with guard.deferred():
                self._db(lambda: trial.report(value, step), "reporting an epoch")
                prune = self._db(trial.should_prune, "asking the pruner")
            if prune:
                raise optuna.TrialPruned(f"pruned at epoch {step} (val mIoU {value:.4f})")

        def on_phase(phase: str) -> None:  # train() prints it too
            with guard.deferred():
                self._db(lambda: trial.set_user_attr(report.PHASE, phase), "recording the phase")

        with tempfile.TemporaryDirectory(prefix="tuner-trial-") as tmp:
            save_path = Path(tmp) / f"trial-{trial.number}.keras" if self.artifacts else None
            try:
                with storage.Heartbeat(self.rdb, trial._trial_id), guard.training():
                    result = train(config, self.data, epoch_callback=on_epoch, verbose=self.verbose,
                                   save_path=save_path, device=device, trainer=self.trainer,
                                   phase_callback=on_phase)
            except optuna.TrialPruned as exc:
                self._tell(trial, state=TrialState.PRUNED)
                self.say(f"trial {trial.number} {exc}")
                return "pruned"
            except Interrupted as exc:
                self._interrupted(trial, exc)
                return "interrupted"
            except optuna.exceptions.UpdateFinishedTrialError:
                raise  # not the config's fault: see run_trial
            except Exception as exc:  # noqa: BLE001 - one bad config must not kill the worker
                traceback.print_exc(file=sys.stderr)
                line = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500]
                self._db(lambda: trial.set_user_attr(report.ERROR, line), "recording the error")
                self._tell(trial, state=TrialState.FAIL)
                self.say(f"trial {trial.number} failed: {line}")
                return "failed"

            self._db(lambda: report.record_result(trial, result), "recording the result")
            if not math.isfinite(result.best_miou):
                message = "mean IoU undefined: no class 1-4 pixel in the validation split"
                self._db(lambda: trial.set_user_attr(report.ERROR, message), "recording the error")
                self._tell(trial, state=TrialState.FAIL)
                self.say(f"trial {trial.number} failed: {message}")
                return "failed"
            if save_path is not None:
                self._upload_if_best(trial, result.best_miou, save_path)
            self._tell(trial, values=result.best_miou)
        per_class = " ".join(f"c{c}={_short(v)}" for c, v in result.per_class_iou.items())
        self.say(f"trial {trial.number} complete: mIoU {result.best_miou:.4f} ({per_class}) "
                 f"in {result.wall_time_s:.0f}s, {result.epochs_run} epochs")
        return "complete"

    def _interrupted(self, trial: optuna.Trial, exc: Interrupted) -> None:
        """Fail the trial and queue the same parameters again for any worker.

        Both happen under the budget lock: a worker counting between the FAIL and the queued
        copy would see a free slot, ask a new trial, and the study would overrun its budget.
        """
        name = str(exc)
        self._db(lambda: trial.set_user_attr(report.INTERRUPTED, name), "recording the interruption")
        failed = False

        def fail_and_requeue() -> None:
            nonlocal failed
            with budget_lock(self.study, self.rdb, self.url):
                if not failed:  # a retry after a lost connection must not fail it twice
                    self._tell_now(trial, state=TrialState.FAIL)
                    failed = True
                self.study.enqueue_trial(trial.params, user_attrs={report.RETRY_OF: trial.number})

        self._db(fail_and_requeue, "failing and re-queueing the trial")
        self.say(f"trial {trial.number} interrupted by {name}: marked FAIL and queued again")

    def _upload_if_best(self, trial: optuna.Trial, value: float, path: Path) -> None:
        try:
            best = self.study.best_value
        except ValueError:  # no completed trial yet
            best = -math.inf
        if value <= best:
            return
        from optuna.artifacts import upload_artifact

        artifact_id = self._db(
            lambda: upload_artifact(artifact_store=self.artifacts, file_path=str(path), study_or_trial=trial),
            "uploading the model",
        )
        self._db(lambda: trial.set_user_attr(report.MODEL_ARTIFACT, artifact_id), "recording the model")
        self.say(f"trial {trial.number}: new best, model uploaded as artifact {artifact_id}")

    def _tell(self, trial: optuna.Trial, **kwargs: Any) -> None:
        self._db(lambda: self._tell_now(trial, **kwargs), "reporting the trial's end")

    def _tell_now(self, trial: optuna.Trial, **kwargs: Any) -> None:
        """``study.tell``, but a trial finished elsewhere is UpdateFinishedTrialError.

        Optuna raises a plain ValueError ("Cannot tell a FAIL trial") when the trial was failed
        as stale before this tell began; only a race inside the tell gives the specific error.
        Both mean the same here, and :meth:`run_trial` turns it into "dropped".
        """
        if self.rdb.get_trial(trial._trial_id).state.is_finished():
            raise optuna.exceptions.UpdateFinishedTrialError(f"trial {trial.number} is already finished")
        self.study.tell(trial, **kwargs)

    def _db(self, call: Callable[[], Any], what: str) -> Any:
        return with_db_retry(call, what=what, max_wait_s=float(self.spec.grace_period), on_retry=self.say)


def _printer(prefix: str) -> Callable[[str], None]:
    def say(line: str) -> None:
        print(f"{prefix} {line}", flush=True)

    return say


def _short(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.4g}"
    return str(value)


__all__ = ["Interrupted", "RunnerError", "SignalGuard", "run_worker"]
