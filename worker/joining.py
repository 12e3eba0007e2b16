"""Joining a study: everything a worker checks and opens before its first trial, in order of cost.

The study's spec is read first (waiting for the database with ``--wait-for-db``), then the
artifact directory, the local data (its fingerprint must be the study's), the device, and
last the storage and the study with the spec's sampler and pruner. Whatever fails, fails
before a trial is asked, with one line.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import logging
import os
from pathlib import Path
import time
from typing import Any
import warnings

import optuna

from contract import trial_attrs
from contract.artifacts import open_artifact_store
from contract.data import MarsData, load_npz
from contract.study_spec import StudySpec
import storage
from storage.errors import SettingError
from storage.retry import DatabaseUnavailable, is_transient
from storage.retry import describe as describe_db_error
from worker.errors import DatabaseLost, RunnerError, StudyGone, StudyMissing
from worker.study_link import StudyLink, call_within_grace

WAIT_FOR_DB_LINE_S = 5.0


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


@dataclasses.dataclass
class Joined:
    """A worker joined to a study: what its trials share."""

    options: WorkerOptions
    say: Callable[[str], None]
    spec: StudySpec
    identity: dict[str, Any]
    data: MarsData
    device: Any
    provenance: dict[str, Any]
    link: StudyLink
    artifacts: Any
    log_handler: _SayHandler

    def close(self) -> None:
        self.log_handler.detach()
        self.link.close()


def join(options: WorkerOptions) -> Joined:
    """Check everything that can be checked before the first trial, in order of cost.

    Raises:
        RunnerError: no such study, other data than the study's.
        contract.study_spec.SpecError: the study's spec is unreadable.
        contract.artifacts.ArtifactDirError: a bad artifact directory.
        worker.training.device.DeviceError: a bad ``--gpu`` or device.
        storage.StorageError: database unreachable (after ``wait_for_db_s``) or without schema.
        contract.data_format.DataError: the local data file is invalid.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    identity = trial_attrs.worker_identity(options.gpu)
    say = _printer(f"[{identity['host']}:{identity['pid']}]")
    url = storage.resolve_url(options.storage_url)
    spec = wait_for_spec(url, options.study_name, options.wait_for_db_s, say)
    log_handler = _SayHandler(say)
    log_handler.attach()
    try:
        artifacts = _artifact_store(options.artifact_dir)
        data = _load_data(options, spec, say)
        device, provenance = _device(options, url, say)
        rdb, study = open_study(url, options, spec, f"{identity['host']}:{identity['pid']}:{options.gpu}", say)
    except BaseException:
        log_handler.detach()
        raise
    link = StudyLink(study, rdb, url, spec.grace_period, say)
    return Joined(options, say, spec, identity, data, device, provenance, link, artifacts, log_handler)


def _artifact_store(artifact_dir: Path | None) -> Any:
    """Before loading data or training: a bad path must not cost a trial."""
    return None if artifact_dir is None else open_artifact_store(artifact_dir, create=True)


def _load_data(options: WorkerOptions, spec: StudySpec, say: Callable[[str], None]) -> MarsData:
    # Training needs no test images (~650 MB); aliens are removed as the study's data was.
    data = load_npz(options.data_path, load_test=False, remove_aliens=spec.remove_aliens)
    if data.fingerprint != spec.data_fingerprint:
        raise RunnerError(
            f"refusing to join study {options.study_name!r}: local data {options.data_path} has fingerprint "
            f"{data.fingerprint[:12]}, the study was created for {spec.data_fingerprint[:12]}"
        )
    say(
        f"data {options.data_path}: {len(data)} images (aliens removed: {data.aliens_removed}), "
        f"fingerprint {data.fingerprint[:12]} matches the study"
    )
    return data


def _device(options: WorkerOptions, url: str, say: Callable[[str], None]) -> tuple[Any, dict[str, Any]]:
    # Importing the backend is the first quiet stretch a new user sees (seconds; more on a busy machine).
    say(f"starting Keras on {os.environ.get('KERAS_BACKEND') or 'tensorflow'} (takes a few seconds)")
    from worker.training.device import configure, describe

    device = configure(options.gpu)
    provenance = describe(device)
    from worker.training.backend import enable_compile_cache

    enable_compile_cache(warn=say)  # a bad TUNER_COMPILE_CACHE is a warning here, not a failed trial
    say(f"device {device.kind} {device.name}; study {options.study_name!r} on {storage.mask_url(url)}")
    return device, provenance


def open_study(
    url: str,
    options: WorkerOptions,
    spec: StudySpec,
    sampler_key: str,
    say: Callable[[str], None],
) -> tuple[optuna.storages.RDBStorage, optuna.Study]:
    """The worker's storage and its study, with the spec's sampler (seeded by ``sampler_key``) and pruner.

    A connection killed meanwhile is retried for the grace period, as during a trial.

    Raises:
        StudyGone: the study was deleted since its spec was read.
        DatabaseLost: the database stayed away for the grace period.
    """

    def attempt() -> tuple[optuna.storages.RDBStorage, optuna.Study]:
        rdb = storage.open_storage(
            url, heartbeat_interval=spec.heartbeat_interval, grace_period=spec.grace_period, max_retry=spec.max_retry
        )
        try:
            return rdb, optuna.load_study(
                study_name=options.study_name,
                storage=rdb,
                sampler=spec.make_sampler(sampler_key),
                pruner=spec.make_pruner(),
            )
        except BaseException:
            rdb.engine.dispose()
            raise

    try:
        return call_within_grace(attempt, "joining the study", spec.grace_period, say)
    except KeyError:
        raise StudyGone(options.study_name) from None
    except DatabaseUnavailable as exc:
        raise DatabaseLost(f"{exc}; start the worker again when the database is back") from None


def wait_for_spec(url: str, study_name: str, wait_s: float, say: Callable[[str], None]) -> StudySpec:
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
            return read_spec(url, study_name)
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
                    raise DatabaseLost(
                        f"database connection lost while reading study {study_name!r} "
                        f"for {now - lost_since:.0f}s ({describe_db_error(exc)})"
                    ) from None
                raise
            if lost:
                say(f"database connection lost while reading the study ({describe_db_error(exc)}); retrying")
            elif now >= next_line:
                say(f"waiting for the database ({deadline - now:.0f}s left of --wait-for-db {wait_s:.0f}): {exc}")
                next_line = now + WAIT_FOR_DB_LINE_S
            time.sleep(min(1.0, max(0.0, deadline - now)))


def read_spec(url: str, study_name: str) -> StudySpec:
    """The study's spec, read once; :class:`StudyMissing` when there is no such study."""
    probe = storage.open_storage(url, heartbeat_interval=None)
    try:
        study = optuna.load_study(study_name=study_name, storage=probe)
    except KeyError:
        raise StudyMissing(
            f"no study {study_name!r} in {storage.mask_url(url)}: create it with `tuner create`"
        ) from None
    finally:
        probe.engine.dispose()
    return StudySpec.of(study)  # SpecError for any unreadable spec


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


__all__ = ["Joined", "WorkerOptions", "join", "open_study", "read_spec", "wait_for_spec"]
