"""The worker loop: pull trials from a shared study and train each one.

One process per GPU, any number of machines, one study. The loop is ask/tell rather than
``Study.optimize`` because it must (a) enforce a budget counted across all workers, (b) report
per-class IoU and provenance, (c) turn SIGTERM into a cleanly failed and re-queued trial, and
(d) ride out database outages. Optuna only wires heartbeats into ``optimize``, so this loop runs
them itself (:class:`storage.Heartbeat`) and fails stale trials before every ask.

The rooms around it: :mod:`worker.joining` (everything checked before the first trial),
:mod:`worker.signals` (SIGTERM/SIGINT), :mod:`worker.study_link` (database calls that ride out
outages), :mod:`worker.asking` (the next trial within the budget), :mod:`worker.requeue` (fail,
and queue again) and :mod:`worker.uploads` (best models).
"""

from __future__ import annotations

import collections
from collections.abc import Callable
import enum
import math
from pathlib import Path
import signal
import sys
import tempfile
import traceback
from typing import Any

import optuna
from optuna.trial import TrialState

from contract import trial_attrs
import storage
from storage.optuna_internals import trial_id
from storage.retry import is_transient
from worker.asking import next_trial
from worker.errors import DatabaseLost, RunnerError, StudyGone
from worker.joining import Joined, WorkerOptions, join
from worker.requeue import fail, requeue, requeue_after_outage, retry_of_trial
from worker.signals import Interrupted, SignalGuard
from worker.study_link import StudyLink
from worker.uploads import Uploader

EXIT_OK = 0
EXIT_FAILURES = 1


class Outcome(enum.Enum):
    """How one trial ended for this worker."""

    COMPLETE = "complete"
    PRUNED = "pruned"
    FAILED = "failed"  # the configuration failed (counts towards --max-failures)
    INTERRUPTED = "interrupted"  # SIGTERM/SIGINT: failed and queued again
    REQUEUED = "re-queued"  # the database went away mid-trial and came back: queued again
    DROPPED = "dropped"  # failed as stale by another worker meanwhile, which queued its retry


def run_worker(**options: Any) -> int:
    """Join a study and run trials until its budget is reached; return an exit code.

    Takes the fields of :class:`WorkerOptions` as keywords.

    Raises:
        RunnerError: no such study, the local data differ from the study's, the study was
            replaced meanwhile, or the database stayed away longer than the grace period.
        storage.StorageError: database unreachable (after ``wait_for_db_s``) or without schema.
        contract.data_format.DataError: the local data file is invalid.
    """
    session = WorkerSession(join(WorkerOptions(**options)))
    try:
        return session.loop()
    finally:
        session.close()


class WorkerSession:
    """The trial loop of one worker joined to one study: ask, train, tell, until the budget is spent."""

    def __init__(self, joined: Joined) -> None:
        self.joined = joined
        self.options, self.spec, self.say, self.link = joined.options, joined.spec, joined.say, joined.link
        self.uploader = Uploader(self.link, joined.artifacts, self.options.artifact_dir) if joined.artifacts else None
        self.trainer: Any = None  # one worker.training.train.Trainer per process: reuses compiled models

    def close(self) -> None:
        self.joined.close()

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

    def next_trial(self, guard: SignalGuard) -> optuna.Trial | None:
        """Ask for a trial if the shared budget allows; ``None`` when the study is done
        (:func:`worker.asking.next_trial`)."""
        return next_trial(self.link, self.spec.n_trials, float(self.spec.heartbeat_interval), self.say, guard)

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
                if self.link.replaced():
                    raise self.link.gone() from None
                if is_transient(exc):
                    requeue_after_outage(self.link, trial, exc)  # may find the trial taken over, too
                    return Outcome.REQUEUED
                raise
        except optuna.exceptions.UpdateFinishedTrialError:
            self.say(
                f"trial {trial.number} was finished elsewhere meanwhile (failed as stale by "
                "another worker, which queued its retry); this worker's result is dropped"
            )
            return Outcome.DROPPED

    def _run_trial(self, trial: optuna.Trial, guard: SignalGuard) -> Outcome:
        config, device, confirming = self._start(trial)
        # A confirmation measures its configuration's spread over seeds: cutting its unlucky
        # seeds short would bias exactly that, so the pruner is never asked.
        on_epoch, on_phase = _reporters(
            self.link, trial, guard, multi_objective=self.spec.multi_objective, may_prune=confirming is None
        )
        with tempfile.TemporaryDirectory(prefix="tuner-trial-") as tmp:
            save_path = Path(tmp) / f"trial-{trial.number}.keras" if self.uploader else None
            try:
                with self._heartbeat(trial), guard.training():
                    result = self._train(config, on_epoch, on_phase, save_path, device)
            except optuna.TrialPruned as exc:
                self.link.tell(trial, state=TrialState.PRUNED)
                self.say(f"trial {trial.number} {exc}")
                return Outcome.PRUNED
            except Interrupted as exc:
                requeue(self.link, trial, interrupted=str(exc))
                self.say(f"trial {trial.number} interrupted by {exc}: marked FAIL and queued again")
                return Outcome.INTERRUPTED
            except optuna.exceptions.UpdateFinishedTrialError:
                raise  # not the config's fault: see run_trial
            except Exception as exc:  # noqa: BLE001 - one bad config must not kill the worker
                if is_transient(exc) or self.link.replaced():
                    raise  # not the config's fault: see run_trial
                traceback.print_exc(file=sys.stderr)
                line = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500]
                return self._fail(trial, line)
            return self._finish(trial, result, save_path)

    def _start(self, trial: optuna.Trial) -> tuple[Any, Any, tuple[int, int] | None]:
        """Sample the trial's configuration and record its start.

        Returns the config, its device, and for a `tuner confirm` trial (confirmed trial, seed).
        """
        from worker.training.device import with_precision

        link, joined = self.link, self.joined
        call = link.call
        config = call(lambda: self.spec.space.sample(trial), "sampling the trial's parameters")
        confirming = trial_attrs.confirmation_of(trial.user_attrs)  # `tuner confirm`: (trial, seed)
        if confirming is not None:  # the same configuration, another split and initialisation
            config = config.replace(seed=confirming[1])
        device = with_precision(joined.device, config.mixed_precision)
        retry_of = call(lambda: retry_of_trial(link.rdb, trial), "reading the trial's origin")
        call(lambda: trial_attrs.record_start(trial, config, joined.identity, joined.provenance), "recording the trial")
        params = ", ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
        again = f" (retry of trial {retry_of})" if retry_of is not None else ""
        if confirming is not None:
            again += f" (confirms trial {confirming[0]} with seed {confirming[1]})"
        self.say(f"trial {trial.number} started{again}: {params}")
        return config, device, confirming

    def _finish(self, trial: optuna.Trial, result: Any, save_path: Path | None) -> Outcome:
        """Record a trained trial's result, upload its model if best, tell the study."""
        # The result first: an upload that fails (disk full) must not cost the trial.
        self.link.call(lambda: trial_attrs.record_result(trial, result), "recording the result")
        if not math.isfinite(result.best_miou):
            return self._fail(trial, "mean IoU undefined: no class 1-4 pixel in the validation split")
        values: float | list[float] = result.best_miou
        cost_text = ""
        if self.spec.cost is not None:
            cost = trial_attrs.cost_of(result, self.spec.cost)
            if cost is None or not math.isfinite(cost):
                return self._fail(trial, f"cost {self.spec.cost} not measured ({cost!r})")
            values = [result.best_miou, cost]
            cost_text = f", {self.spec.cost} {cost:.6g}"
        if save_path is not None and self.uploader is not None:
            with self._heartbeat(trial):
                self.uploader.upload_if_best(trial, values, save_path, getattr(result, "preview", None))
        self.link.tell(trial, values=values)
        per_class = " ".join(f"c{c}={_short(v)}" for c, v in result.per_class_iou.items())
        self.say(
            f"trial {trial.number} complete: mIoU {result.best_miou:.4f} ({per_class}){cost_text} "
            f"in {result.wall_time_s:.0f}s, {result.epochs_run} epochs"
        )
        return Outcome.COMPLETE

    def _fail(self, trial: optuna.Trial, line: str) -> Outcome:
        fail(self.link, trial, line)
        return Outcome.FAILED

    def _train(
        self,
        config: Any,
        on_epoch: Callable[[int, float], None],
        on_phase: Callable[[str], None],
        save_path: Path | None,
        device: Any,
    ) -> Any:
        """The one place a trial trains, on this process's ``Trainer`` (compiled models reused)."""
        from worker.training.train import Trainer, train

        self.trainer = self.trainer or Trainer()
        return train(
            config,
            self.joined.data,
            epoch_callback=on_epoch,
            verbose=self.options.verbose,
            save_path=save_path,
            device=device,
            trainer=self.trainer,
            phase_callback=on_phase,
            measure_latency=self.spec.cost == "latency",
        )

    def _heartbeat(self, trial: optuna.Trial) -> storage.Heartbeat:
        return storage.Heartbeat(self.link.rdb, trial_id(trial), number=trial.number)


def _reporters(
    link: StudyLink,
    trial: optuna.Trial,
    guard: SignalGuard,
    *,
    multi_objective: bool,
    may_prune: bool,
) -> tuple[Callable[[int, float], None], Callable[[str], None]]:
    """What training calls after each epoch (report, maybe prune) and at each phase.

    Each call waits for its database call to end before a signal interrupts the training.
    """
    call, rdb = link.call, link.rdb

    def on_epoch(epoch: int, val_miou: float) -> None:
        step = epoch + 1
        value = val_miou if math.isfinite(val_miou) else 0.0
        with guard.deferred():
            if multi_objective:
                # Optuna's Trial.report refuses several objectives (its pruners judge one value);
                # the epoch's mIoU is still stored, for learning curves and `tuner status`.
                call(lambda: rdb.set_trial_intermediate_value(trial_id(trial), step, value), "recording an epoch")
                return
            call(lambda: trial.report(value, step), "reporting an epoch")
            prune = may_prune and call(trial.should_prune, "asking the pruner")
        if prune:
            raise optuna.TrialPruned(f"pruned at epoch {step} (val mIoU {value:.4f})")

    def on_phase(phase: str) -> None:  # train() prints it too; `tuner status` shows it
        with guard.deferred():
            call(lambda: trial.set_user_attr(trial_attrs.PHASE, phase), "recording the phase")

    return on_epoch, on_phase


def _short(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.4g}"
    return str(value)


__all__ = [
    "DatabaseLost",
    "Interrupted",
    "Outcome",
    "RunnerError",
    "SignalGuard",
    "StudyGone",
    "WorkerOptions",
    "WorkerSession",
    "run_worker",
]
