"""The worker loop: pull trials from a shared study and train each one.

One process per GPU, any number of machines, one study. The loop is ask/tell rather than
``Study.optimize`` because it must (a) enforce a budget counted across all workers, (b) report
per-class IoU and provenance, (c) turn SIGTERM into a cleanly failed and re-queued trial, and
(d) ride out database outages. Optuna only wires heartbeats into ``optimize``, so this loop runs
them itself (:class:`storage.Heartbeat`) and fails stale trials before every ask.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
import contextlib
import dataclasses
import enum
import logging
import math
import os
from pathlib import Path
import signal
import sys
import tempfile
import threading
import time
import traceback
from types import FrameType
from typing import Any, TypeVar
import warnings

import optuna
from optuna.trial import TrialState
import sqlalchemy

from contract import report
from contract.artifacts import ArtifactDirError, open_artifact_store
from contract.data import MarsData, load_npz
from contract.errors import TunerError
from contract.study_spec import SpecError, StudySpec
import storage
from storage.errors import SettingError
from storage.retry import DatabaseUnavailable, is_transient, with_db_retry
from storage.retry import describe as describe_db_error
from worker.budget import ask_within_budget, budget_lock

EXIT_OK = 0
EXIT_FAILURES = 1
WAIT_POLL_S = 10.0
WAIT_FOR_DB_LINE_S = 5.0
T = TypeVar("T")


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


class Outcome(enum.Enum):
    """How one trial ended for this worker."""

    COMPLETE = "complete"
    PRUNED = "pruned"
    FAILED = "failed"  # the configuration failed (counts towards --max-failures)
    INTERRUPTED = "interrupted"  # SIGTERM/SIGINT: failed and queued again
    REQUEUED = "re-queued"  # the database went away mid-trial and came back: queued again
    DROPPED = "dropped"  # failed as stale by another worker meanwhile, which queued its retry


class StudyGone(RunnerError):
    """The study was deleted or replaced (``tuner create --overwrite``) while this worker ran."""


class DatabaseLost(RunnerError):
    """The database stayed unreachable for longer than the grace period."""


class _GaveUp(DatabaseUnavailable):
    """A database call kept failing for the whole grace period (raised through Keras' fit)."""

    def __init__(self, what: str, seconds: float, cause: BaseException) -> None:
        super().__init__(f"database unavailable for {seconds:.0f}s during {what} ({describe_db_error(cause)})")
        self.what = what


@dataclasses.dataclass(frozen=True)
class WorkerOptions:
    """What ``worker run`` was asked to do."""

    study_name: str
    data_path: Path
    storage_url: str | None
    gpu: int | None = None
    max_trials: int | None = None
    max_failures: int = 3
    artifact_dir: Path | None = None
    verbose: bool = True
    wait_for_db_s: float = 0.0


def run_worker(**options: Any) -> int:
    """Join a study and run trials until its budget is reached; return an exit code.

    Takes the fields of :class:`WorkerOptions` as keywords.

    Raises:
        RunnerError: no such study, the local data differ from the study's, the study was
            replaced meanwhile, or the database stayed away longer than the grace period.
        storage.StorageError: database unreachable (after ``wait_for_db_s``) or without schema.
        contract.data.DataError: the local data file is invalid.
    """
    session = WorkerSession.open(WorkerOptions(**options))
    try:
        return session.loop()
    finally:
        session.close()


class WorkerSession:
    """One worker process joined to one study: what its trials share, and the trial loop."""

    def __init__(
        self, options: WorkerOptions, say: Callable[[str], None], url: str, spec: StudySpec
    ) -> None:
        self.options, self.say, self.url, self.spec = options, say, url, spec
        self.identity = report.worker_identity(options.gpu)
        self.artifacts: Any = None
        self.data: MarsData | None = None
        self.device: Any = None
        self.provenance: dict[str, Any] = {}
        self.rdb: optuna.storages.RDBStorage | None = None
        self.study: optuna.Study | None = None
        self.trainer: Any = None  # one worker.training.train.Trainer per process: reuses compiled models
        self._log_handler = _SayHandler(say)

    # -- joining ----------------------------------------------------------------------------

    @classmethod
    def open(cls, options: WorkerOptions) -> WorkerSession:
        """Check everything that can be checked before the first trial, in order of cost."""
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        identity = report.worker_identity(options.gpu)
        say = _printer(f"[{identity['host']}:{identity['pid']}]")
        url = storage.resolve_url(options.storage_url)
        spec = _wait_for_spec(url, options.study_name, options.wait_for_db_s, say)
        session = cls(options, say, url, spec)
        session._log_handler.attach()
        try:
            session._join()
        except BaseException:
            session.close()
            raise
        return session

    def _join(self) -> None:
        opts = self.options
        if opts.artifact_dir is not None:  # before loading data or training: a bad path must not cost a trial
            try:
                self.artifacts = open_artifact_store(opts.artifact_dir, create=True)
            except ArtifactDirError as exc:
                raise RunnerError(str(exc)) from None

        # Training needs no test images (~650 MB); aliens are removed as the study's data was.
        data = load_npz(opts.data_path, load_test=False, remove_aliens=self.spec.remove_aliens)
        if data.fingerprint != self.spec.data_fingerprint:
            raise RunnerError(
                f"refusing to join study {opts.study_name!r}: local data {opts.data_path} has fingerprint "
                f"{data.fingerprint[:12]}, the study was created for {self.spec.data_fingerprint[:12]}"
            )
        self.data = data
        self.say(f"data {opts.data_path}: {len(data)} images (aliens removed: {data.aliens_removed}), "
                 f"fingerprint {data.fingerprint[:12]} matches the study")

        # Importing the backend is the first quiet stretch a new user sees (seconds; more on a busy machine).
        self.say(f"starting Keras on {os.environ.get('KERAS_BACKEND') or 'tensorflow'} (takes a few seconds)")
        from worker.training.device import DeviceError, configure, describe

        try:
            self.device = configure(opts.gpu)
        except DeviceError as exc:
            raise RunnerError(str(exc)) from None
        self.provenance = describe(self.device)
        from worker.training.backend import enable_compile_cache

        enable_compile_cache(warn=self.say)  # a bad TUNER_COMPILE_CACHE is a warning here, not a failed trial
        self.say(f"device {self.device.kind} {self.device.name}; study {opts.study_name!r} "
                 f"on {storage.mask_url(self.url)}")

        def join() -> tuple[optuna.storages.RDBStorage, optuna.Study]:
            rdb = storage.open_storage(
                self.url, heartbeat_interval=self.spec.heartbeat_interval, grace_period=self.spec.grace_period,
                max_retry=self.spec.max_retry,
            )
            try:
                return rdb, optuna.load_study(
                    study_name=opts.study_name, storage=rdb,
                    sampler=self.spec.make_sampler(f"{self.identity['host']}:{self.identity['pid']}:{opts.gpu}"),
                    pruner=self.spec.make_pruner(),
                )
            except BaseException:
                rdb.engine.dispose()
                raise

        try:  # a connection killed meanwhile is retried for the grace period, as during a trial
            self.rdb, self.study = self._db(join, "joining the study")
        except KeyError:
            raise self._gone() from None
        except DatabaseUnavailable as exc:
            raise DatabaseLost(f"{exc}; start the worker again when the database is back") from None

    def close(self) -> None:
        self._log_handler.detach()
        if self.rdb is not None:
            self.rdb.engine.dispose()

    # -- the loop ---------------------------------------------------------------------------

    def loop(self) -> int:
        """Run trials until the budget is reached, ``--max-trials``, a signal or too many failures."""
        opts = self.options
        outcomes: collections.Counter[Outcome] = collections.Counter()
        consecutive_failures = 0
        code = EXIT_OK
        with SignalGuard() as guard:
            while not guard.stop_requested:
                if opts.max_trials is not None and sum(outcomes.values()) >= opts.max_trials:
                    self.say(f"ran --max-trials {opts.max_trials} trial(s); stopping")
                    break
                trial = self.next_trial(guard)
                if trial is None:
                    break
                outcome = self.run_trial(trial, guard)
                outcomes[outcome] += 1
                consecutive_failures = consecutive_failures + 1 if outcome is Outcome.FAILED else 0
                if consecutive_failures >= opts.max_failures:
                    self.say(f"{consecutive_failures} trials failed in a row; stopping this worker")
                    code = EXIT_FAILURES
                    break
            if guard.stop_requested:
                self.say(f"stopped by {signal.Signals(guard.signum).name}")  # type: ignore[arg-type]
        summary = ", ".join(f"{n} {k.value}" for k, n in sorted(outcomes.items(), key=lambda i: i[0].value))
        self.say(f"done: {summary or 'no trials'}")
        return code

    # -- asking -----------------------------------------------------------------------------

    def next_trial(self, guard: SignalGuard) -> optuna.Trial | None:
        """Ask for a trial if the shared budget allows; ``None`` when the study is done.

        Counting and asking happen under one database lock, so N workers racing for the last
        trial create exactly one. Queued trials (retries, `tuner confirm`'s) are always taken. When the budget is
        fully allocated but other workers still run trials, wait: one of them may die, and its
        retry needs a worker. A signal while waiting for the lock stops the worker at once.
        """
        assert self.study is not None and self.rdb is not None
        study, rdb = self.study, self.rdb

        def stop_waiting(waited_s: float) -> None:
            if guard.stop_requested:
                raise Interrupted(guard.signum)  # type: ignore[arg-type]

        announced = False
        while not guard.stop_requested:
            try:
                trial, counts = self._db(
                    lambda: ask_within_budget(study, rdb, self.url, self.spec.n_trials,
                                              on_wait=stop_waiting, on_log=self.say),
                    "asking for a trial",
                )
            except Interrupted:
                return None  # the loop reports the signal
            except _GaveUp as exc:
                raise DatabaseLost(f"{exc}; no trial was running; start the worker again when "
                                   "the database is back") from None
            except (KeyError, sqlalchemy.exc.IntegrityError):
                if self._study_replaced():
                    raise self._gone() from None
                raise
            if trial is not None:
                return trial
            # Only search trials count towards the budget; running confirmations (counts[...] is
            # the total) keep this worker waiting too: one of them may die and need its retry run.
            finished = counts.search[TrialState.COMPLETE] + counts.search[TrialState.PRUNED]
            confirmed = counts.confirming[TrialState.COMPLETE]
            also = f", {confirmed} confirmation trial(s) complete" if confirmed else ""
            if counts[TrialState.RUNNING] == 0:
                self.say(f"study budget reached: {finished}/{self.spec.n_trials} trials finished{also}")
                return None
            if not announced:
                self.say(f"budget allocated ({finished}/{self.spec.n_trials} finished); waiting for "
                         f"{counts[TrialState.RUNNING]} running trial(s) in case one is retried")
                announced = True
            guard.sleep(min(float(self.spec.heartbeat_interval), WAIT_POLL_S))
        return None

    # -- running ----------------------------------------------------------------------------

    def run_trial(self, trial: optuna.Trial, guard: SignalGuard) -> Outcome:
        """Train one trial and tell the study how it ended.

        Database trouble is never the configuration's fault: a trial cut off from the database
        for the whole grace period is queued again if the database is back, and otherwise the
        worker stops with one line, leaving the trial RUNNING for the heartbeat check to fail and
        retry. A trial failed as stale by another worker meanwhile is "dropped".
        """
        try:
            try:
                return self._run_trial(trial, guard)
            except optuna.exceptions.UpdateFinishedTrialError:
                raise
            except Exception as exc:
                if self._study_replaced():
                    raise self._gone() from None
                if is_transient(exc):
                    return self._database_lost(trial, exc)  # may find the trial taken over, too
                raise
        except optuna.exceptions.UpdateFinishedTrialError:
            self.say(f"trial {trial.number} was finished elsewhere meanwhile (failed as stale by "
                     "another worker, which queued its retry); this worker's result is dropped")
            return Outcome.DROPPED

    def _run_trial(self, trial: optuna.Trial, guard: SignalGuard) -> Outcome:
        from worker.training.device import with_precision

        config = self._db(lambda: self.spec.space.sample(trial), "sampling the trial's parameters")
        confirming = report.confirmation_of(trial.user_attrs)  # `tuner confirm`: (trial, seed)
        if confirming is not None:  # the same configuration, another split and initialisation
            config = config.replace(seed=confirming[1])
        device = with_precision(self.device, config.mixed_precision)
        retry_of = self._db(lambda: self._retry_of(trial), "reading the trial's origin")
        self._db(lambda: report.record_start(trial, config, self.identity, self.provenance), "recording the trial")
        params = ", ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
        again = f" (retry of trial {retry_of})" if retry_of is not None else ""
        if confirming is not None:
            again += f" (confirms trial {confirming[0]} with seed {confirming[1]})"
        self.say(f"trial {trial.number} started{again}: {params}")

        multi = self.spec.multi_objective
        rdb = self.rdb
        assert rdb is not None

        def on_epoch(epoch: int, val_miou: float) -> None:
            step = epoch + 1
            value = val_miou if math.isfinite(val_miou) else 0.0
            with guard.deferred():
                if multi:
                    # Optuna's Trial.report refuses several objectives (its pruners judge one value);
                    # the epoch's mIoU is still stored, for learning curves and `tuner status`.
                    self._db(lambda: rdb.set_trial_intermediate_value(trial._trial_id, step, value),
                             "recording an epoch")
                    return
                self._db(lambda: trial.report(value, step), "reporting an epoch")
                # A confirmation measures its configuration's spread over seeds: cutting its
                # unlucky seeds short would bias exactly that, so the pruner is never asked.
                prune = confirming is None and self._db(trial.should_prune, "asking the pruner")
            if prune:
                raise optuna.TrialPruned(f"pruned at epoch {step} (val mIoU {value:.4f})")

        def on_phase(phase: str) -> None:  # train() prints it too; `tuner status` shows it
            with guard.deferred():
                self._db(lambda: trial.set_user_attr(report.PHASE, phase), "recording the phase")

        with tempfile.TemporaryDirectory(prefix="tuner-trial-") as tmp:
            save_path = Path(tmp) / f"trial-{trial.number}.keras" if self.artifacts else None
            try:
                with self._heartbeat(trial), guard.training():
                    result = self._train(config, on_epoch, on_phase, save_path, device)
            except optuna.TrialPruned as exc:
                self._tell(trial, state=TrialState.PRUNED)
                self.say(f"trial {trial.number} {exc}")
                return Outcome.PRUNED
            except Interrupted as exc:
                self._requeue(trial, interrupted=str(exc))
                self.say(f"trial {trial.number} interrupted by {exc}: marked FAIL and queued again")
                return Outcome.INTERRUPTED
            except optuna.exceptions.UpdateFinishedTrialError:
                raise  # not the config's fault: see run_trial
            except Exception as exc:  # noqa: BLE001 - one bad config must not kill the worker
                if is_transient(exc) or self._study_replaced():
                    raise  # not the config's fault: see run_trial
                traceback.print_exc(file=sys.stderr)
                line = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500]
                return self._fail(trial, line)

            # The result first: an upload that fails (disk full) must not cost the trial.
            self._db(lambda: report.record_result(trial, result), "recording the result")
            if not math.isfinite(result.best_miou):
                return self._fail(trial, "mean IoU undefined: no class 1-4 pixel in the validation split")
            values: float | list[float] = result.best_miou
            cost_text = ""
            if self.spec.cost is not None:
                cost = report.cost_of(result, self.spec.cost)
                if cost is None or not math.isfinite(cost):
                    return self._fail(trial, f"cost {self.spec.cost} not measured ({cost!r})")
                values = [result.best_miou, cost]
                cost_text = f", {self.spec.cost} {cost:.6g}"
            if save_path is not None:
                with self._heartbeat(trial):
                    self._upload_if_best(trial, values, save_path, getattr(result, "preview", None))
            self._tell(trial, values=values)
        per_class = " ".join(f"c{c}={_short(v)}" for c, v in result.per_class_iou.items())
        self.say(f"trial {trial.number} complete: mIoU {result.best_miou:.4f} ({per_class}){cost_text} "
                 f"in {result.wall_time_s:.0f}s, {result.epochs_run} epochs")
        return Outcome.COMPLETE

    def _train(self, config: Any, on_epoch: Callable[[int, float], None], on_phase: Callable[[str], None],
               save_path: Path | None, device: Any) -> Any:
        """The one place a trial trains, on this process's ``Trainer`` (compiled models reused)."""
        from worker.training.train import Trainer, train

        assert self.data is not None
        self.trainer = self.trainer or Trainer()
        return train(config, self.data, epoch_callback=on_epoch, verbose=self.options.verbose,
                     save_path=save_path, device=device, trainer=self.trainer, phase_callback=on_phase,
                     measure_latency=self.spec.cost == "latency")

    def _heartbeat(self, trial: optuna.Trial) -> storage.Heartbeat:
        assert self.rdb is not None
        return storage.Heartbeat(self.rdb, trial._trial_id, number=trial.number)

    def _retry_of(self, trial: optuna.Trial) -> Any:
        # Interrupted trials carry RETRY_OF; Optuna's stale-trial retry records "failed_trial".
        assert self.rdb is not None
        retry_of = trial.user_attrs.get(report.RETRY_OF)
        if retry_of is None:
            retry_of = self.rdb.get_trial_system_attrs(trial._trial_id).get("failed_trial")
        return retry_of

    def _fail(self, trial: optuna.Trial, line: str) -> Outcome:
        self._db(lambda: trial.set_user_attr(report.ERROR, line), "recording the error")
        self._tell(trial, state=TrialState.FAIL)
        self.say(f"trial {trial.number} failed: {line}")
        return Outcome.FAILED

    def _database_lost(self, trial: optuna.Trial, exc: Exception) -> Outcome:
        """The database failed this trial's calls for the whole grace period.

        If it answers again now, the trial is failed and queued again like an interrupted one
        (it says "database unavailable", never counts as a failed configuration). If not, the
        worker stops with one line and leaves the trial RUNNING: it stops beating, so after the
        grace period the next worker to ask fails it and queues its retry.
        """
        reason = str(exc) if isinstance(exc, _GaveUp) else f"database unavailable ({type(exc).__name__})"
        try:
            self._requeue(trial, error=reason, patient=False)
        except optuna.exceptions.UpdateFinishedTrialError:
            raise  # failed as stale meanwhile: run_trial reports it as dropped
        except Exception as again:  # noqa: BLE001
            if not is_transient(again):
                raise
            raise DatabaseLost(
                f"{reason}, longer than the study's grace period ({self.spec.grace_period}s); trial "
                f"{trial.number} is left RUNNING: once the database is back, the next worker to ask "
                "fails it as stale and queues its retry"
            ) from None
        self.say(f"trial {trial.number}: {reason}; marked FAIL and queued again")
        return Outcome.REQUEUED

    def _requeue(
        self, trial: optuna.Trial, *, interrupted: str | None = None, error: str | None = None,
        patient: bool = True,
    ) -> None:
        """Fail the trial and queue the same parameters again for any worker.

        Both happen under the budget lock: a worker counting between the FAIL and the queued
        copy would see a free slot, ask a new trial, and the study would overrun its budget.
        Safe to repeat after a lost reply: a FAIL already stored, or a retry already queued (by
        this worker or by Optuna's stale-trial callback), is not done twice.
        """
        assert self.study is not None and self.rdb is not None
        study, rdb = self.study, self.rdb

        def mark() -> None:
            if interrupted is not None:
                trial.set_user_attr(report.INTERRUPTED, interrupted)
            if error is not None:
                trial.set_user_attr(report.ERROR, error)

        def fail_and_requeue() -> None:
            with budget_lock(study, rdb, self.url):
                stored = rdb.get_trial(trial._trial_id)
                if not stored.state.is_finished():
                    mark()
                    self._tell_now(trial, state=TrialState.FAIL)
                elif stored.state != TrialState.FAIL or not _marked(stored, interrupted=interrupted, error=error):
                    # Finished by someone else: failed as stale while this worker was cut off
                    # (its retry is Optuna's to queue), or completed. Not ours to fail or queue.
                    raise optuna.exceptions.UpdateFinishedTrialError(f"trial {trial.number} finished elsewhere")
                if not _has_retry(study, trial.number):  # a confirmation's retry stays one
                    study.enqueue_trial(trial.params, user_attrs={
                        report.RETRY_OF: trial.number, **report.confirmation_attrs(trial.user_attrs)})

        if patient:
            self._db(fail_and_requeue, "failing and re-queueing the trial")
        else:
            fail_and_requeue()

    def _upload_if_best(self, trial: optuna.Trial, value: float | list[float], path: Path, preview: Any = None) -> None:
        """Upload the model (and its validation preview) if it is the study's best so far.

        With two objectives "best" means on the Pareto front so far (no complete trial beats it
        on both), so whichever trial ``tuner export --pick`` chooses later has its model.
        A failed upload is only a warning: the trial's result is already recorded.
        """
        assert self.study is not None
        study = self.study
        if isinstance(value, list):
            if self._db(lambda: _dominated(study, value), "reading the Pareto front"):
                return
        else:
            try:
                best = self._db(lambda: study.best_value, "reading the best value")
            except ValueError:  # no completed trial yet
                best = -math.inf
            if value <= best:
                return
        from optuna.artifacts import upload_artifact

        store = _CleanupStore(self.artifacts)
        try:
            artifact_id = upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial)
            self._db(lambda: trial.set_user_attr(report.MODEL_ARTIFACT, artifact_id), "recording the model")
        except Exception as exc:  # noqa: BLE001 - the trial's result is worth more than its model file
            store.discard()
            if is_transient(exc) or self._study_replaced():
                raise
            reason = getattr(exc, "strerror", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
            self.say(f"warning: trial {trial.number}: model upload to {self.options.artifact_dir} failed "
                     f"({reason}); the trial's result is kept, its model is not")
            return
        self.say(f"trial {trial.number}: new best, model uploaded as artifact {artifact_id}")
        if preview is not None:  # validation images with truth and prediction, for `tuner report`
            from worker.training.preview import write_png

            preview_store = _CleanupStore(self.artifacts)
            try:
                png = write_png(preview, path.with_suffix(".png"))
                preview_id = upload_artifact(artifact_store=preview_store, file_path=str(png), study_or_trial=trial)
                self._db(lambda: trial.set_user_attr(report.PREVIEW_ARTIFACT, preview_id), "recording the preview")
            except Exception as exc:  # noqa: BLE001 - a picture is worth less than the trial
                preview_store.discard()
                if is_transient(exc) or self._study_replaced():
                    raise
                self.say(f"warning: trial {trial.number}: preview upload failed ({type(exc).__name__})")

    # -- telling ----------------------------------------------------------------------------

    def _tell(self, trial: optuna.Trial, **kwargs: Any) -> None:
        self._db(lambda: self._tell_now(trial, **kwargs), "reporting the trial's end")

    def _tell_now(self, trial: optuna.Trial, **kwargs: Any) -> None:
        """``study.tell``, safe to repeat; a trial finished by someone else is UpdateFinishedTrialError.

        A tell whose reply was lost (connection killed after the commit) is retried and finds
        the trial finished: if it holds what this tell says, the tell had worked. Otherwise the
        trial was failed as stale before this tell (Optuna raises a plain ValueError for that,
        and UpdateFinishedTrialError only for a race inside the tell); :meth:`run_trial` turns
        both into "dropped".
        """
        assert self.study is not None and self.rdb is not None
        stored = self.rdb.get_trial(trial._trial_id)
        if stored.state.is_finished():
            if _holds(stored, **kwargs):
                return
            raise optuna.exceptions.UpdateFinishedTrialError(f"trial {trial.number} is already finished")
        self.study.tell(trial, **kwargs)

    # -- database ---------------------------------------------------------------------------

    def _db(self, call: Callable[[], T], what: str) -> T:
        """``call`` with retries for the study's grace period, then :class:`_GaveUp`."""
        grace = float(self.spec.grace_period)
        try:
            return with_db_retry(call, what=what, max_wait_s=grace, on_retry=self.say)
        except Exception as exc:
            if is_transient(exc) and not isinstance(exc, DatabaseUnavailable):
                raise _GaveUp(what, grace, exc) from exc
            raise

    def _study_replaced(self) -> bool:
        """True when the study this worker joined no longer exists under its name."""
        assert self.rdb is not None
        if self.study is None:
            return False
        try:
            return self.rdb.get_study_id_from_name(self.options.study_name) != self.study._study_id
        except KeyError:
            return True
        except Exception:  # noqa: BLE001 - cannot tell (database away): not replaced as far as we know
            return False

    def _gone(self) -> StudyGone:
        return StudyGone(f"study {self.options.study_name!r} was replaced or deleted "
                         "(`tuner create --overwrite`?); stopping this worker")


def _has_retry(study: optuna.Study, number: int) -> bool:
    """Whether a copy of trial ``number`` is already queued or run (by us or by Optuna's callback)."""
    for other in study.get_trials(deepcopy=False):
        if other.number == number:
            continue
        if number in other.system_attrs.get("retry_history", ()) or other.user_attrs.get(report.RETRY_OF) == number:
            return True
    return False


def _marked(stored: optuna.trial.FrozenTrial, *, interrupted: str | None, error: str | None) -> bool:
    """Whether a FAIL stored for this trial is this worker's own (written with its marks, in one
    transaction, by :meth:`WorkerSession._requeue`: a retry after a lost reply finds them)."""
    return ((interrupted is None or stored.user_attrs.get(report.INTERRUPTED) == interrupted)
            and (error is None or stored.user_attrs.get(report.ERROR) == error)
            and (interrupted is not None or error is not None))


def _holds(stored: optuna.trial.FrozenTrial, *, state: TrialState | None = None,
           values: float | list[float] | None = None) -> bool:
    """Whether a finished trial holds what ``study.tell(state=..., values=...)`` would have stored."""
    if values is not None:
        wanted = values if isinstance(values, list) else [values]
        return stored.state == TrialState.COMPLETE and stored.values == wanted
    return stored.state == state


def _dominated(study: optuna.Study, values: list[float]) -> bool:
    """Whether a COMPLETE trial of ``study`` dominates ``values`` (mIoU, cost)."""
    from contract.pareto import Point, dominates, points_of

    new = Point(-1, values[0], values[1])
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return any(dominates(p, new) for p in points_of(done, study.directions))


class _CleanupStore:
    """An artifact store that removes what a failed upload left behind (a partial file)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._written: list[str] = []

    def open_reader(self, artifact_id: str) -> Any:
        return self._inner.open_reader(artifact_id)

    def write(self, artifact_id: str, content_body: Any) -> None:
        self._written.append(artifact_id)
        self._inner.write(artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        self._inner.remove(artifact_id)

    def discard(self) -> None:
        for artifact_id in self._written:
            with contextlib.suppress(Exception):
                self._inner.remove(artifact_id)
        self._written.clear()


def _wait_for_spec(url: str, study_name: str, wait_s: float, say: Callable[[str], None]) -> StudySpec:
    """Read the study's spec, waiting up to ``wait_s`` for the database (and the study) to appear.

    A coordinator that reboots, or a compose stack whose database and ``tuner create`` job are
    still starting, is not a reason to give up at once when ``--wait-for-db`` says so. A
    connection lost while reading (killed, server restarting) is retried for at least the default
    grace period whatever ``wait_s`` says, as it would be during a trial: the database was there.
    """
    deadline = time.monotonic() + wait_s
    next_line = 0.0
    lost_since: float | None = None
    while True:
        try:
            return _read_spec(url, study_name)
        except SettingError:
            raise  # a wrong setting does not get better by waiting
        except Exception as exc:
            lost = is_transient(exc)
            if not lost and not isinstance(exc, (storage.StorageError, StudyMissing)):
                raise
            now = time.monotonic()
            if lost and lost_since is None:
                lost_since = now
                deadline = max(deadline, now + StudySpec.grace_period)
            if now >= deadline:
                if lost:
                    raise DatabaseLost(f"database connection lost while reading study {study_name!r} "
                                       f"for {now - lost_since:.0f}s ({describe_db_error(exc)})") from None
                raise
            if lost:
                say(f"database connection lost while reading the study ({describe_db_error(exc)}); retrying")
            elif now >= next_line:
                say(f"waiting for the database ({deadline - now:.0f}s left of --wait-for-db {wait_s:.0f}): {exc}")
                next_line = now + WAIT_FOR_DB_LINE_S
            time.sleep(min(1.0, max(0.0, deadline - now)))


class StudyMissing(RunnerError):
    """No study of that name (yet)."""


def _read_spec(url: str, study_name: str) -> StudySpec:
    probe = storage.open_storage(url, heartbeat_interval=None)
    try:
        study = optuna.load_study(study_name=study_name, storage=probe)
    except KeyError:
        raise StudyMissing(
            f"no study {study_name!r} in {storage.mask_url(url)}: create it with `tuner create`"
        ) from None
    finally:
        probe.engine.dispose()
    try:
        return StudySpec.of(study)
    except (SpecError, ValueError) as exc:
        raise RunnerError(str(exc)) from None


class _SayHandler(logging.Handler):
    """Print the storage layer's warnings (heartbeats, lock waits) as this worker's lines."""

    def __init__(self, say: Callable[[str], None]) -> None:
        super().__init__(logging.WARNING)
        self._say = say
        self._logger = logging.getLogger("storage")
        self._propagate = self._logger.propagate

    def emit(self, record: logging.LogRecord) -> None:
        self._say(f"warning: {record.getMessage()}")

    def attach(self) -> None:
        self._logger.addHandler(self)
        self._logger.propagate = False

    def detach(self) -> None:
        self._logger.removeHandler(self)
        self._logger.propagate = self._propagate


def _printer(prefix: str) -> Callable[[str], None]:
    def say(line: str) -> None:
        print(f"{prefix} {line}", flush=True)

    return say


def _short(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.4g}"
    return str(value)


__all__ = [
    "DatabaseLost", "Interrupted", "Outcome", "RunnerError", "SignalGuard", "StudyGone", "WorkerOptions",
    "WorkerSession", "run_worker",
]
