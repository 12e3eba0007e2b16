"""Create and load studies: the coordinator's side of the study contract.

Everything is validated before the database is touched, so a bad search-space file or data file
leaves no half-created study behind.
"""

from __future__ import annotations

import datetime
from importlib import resources
from pathlib import Path
import re
import socket
import uuid

import optuna
from optuna.storages import RDBStorage

from contract.errors import TunerError
from contract.space import SearchSpace
from contract.study_spec import (
    SPEC_ATTR,
    CreateOptions,
    StudySpec,
    default_pruner,
    parse_objectives,
)
import storage
from storage.locks import named_lock
from storage.optuna_internals import delete_study, rename_study, study_id

#: ``studies.study_name`` is VARCHAR(512) in Optuna's schema.
MAX_STUDY_NAME = 512
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")
#: The private name a study has while ``tuner create`` builds it.
BUILDING_PREFIX = ".mars-tuner-building-"
_FILE_SAFE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")


class StudyError(TunerError, RuntimeError):
    """A study-level problem for the user (missing study, existing study, bad inputs)."""


def default_space_path() -> Path:
    return Path(str(resources.files("tuner") / "default_space.yaml"))


def demo_space_path() -> Path:
    return Path(str(resources.files("tuner") / "demo_space.yaml"))


def create_study(name: str, options: CreateOptions) -> str:
    """Create the study and return a one-paragraph summary for the user.

    Everything is checked before the database is touched (:func:`_plan`).

    Raises:
        StudyError: bad options, or the study exists (and neither ``overwrite`` nor
            ``exist_ok`` says what to do).
        SpecError, SpaceError, DataError, WarmStartError: a bad input, in its own words.
    """
    spec, queued, queue_note = _plan(name, options)
    url = storage.resolve_url(options.storage_url)
    storage.init_schema(url)
    rdb = storage.open_storage(url, heartbeat_interval=None, role="coordinator")
    try:
        # One creator at a time per name (compose's init job may run twice at once), and the
        # study appears under its name only when complete (see _create_complete).
        with named_lock(url, f"mars-tuner:create:{name}"):
            existing = {s.study_name for s in optuna.get_all_study_summaries(rdb, include_best_trial=False)}
            if name in existing:
                if options.exist_ok:
                    _check_same(name, spec, StudySpec.of(optuna.load_study(study_name=name, storage=rdb)))
                    return f"study {name!r} already exists in {storage.mask_url(url)}; kept as is"
                if not options.overwrite:
                    raise StudyError(
                        f"study {name!r} already exists in {storage.mask_url(url)}; "
                        "use --overwrite to replace it or --exist-ok to keep it"
                    )
            _create_complete(rdb, name, spec, queued, replace=name in existing)
    finally:
        rdb.engine.dispose()
    pairs = zip(spec.objectives, spec.directions, strict=True)  # one direction per objective
    goal = "" if not spec.multi_objective else f"objectives {', '.join(f'{o} ({d[:3]})' for o, d in pairs)}, "
    return (
        f"created study {name!r} in {storage.mask_url(url)}: {goal}{spec.n_trials} trials, "
        f"{len(spec.space.params)} searched parameters, "
        f"sampler {spec.sampler} (seed {spec.seed}{_hint(spec)}), "
        f"pruner {spec.pruner} (max {spec.space.max_epochs} epochs), data {spec.data_fingerprint[:12]}"
        + (f"; {queue_note}" if queue_note else "")
    )


def _hint(spec: StudySpec) -> str:
    """The expected workers, and a warning when the budget is under 3 waves of them: most trials
    then start before any result exists, and TPE did no better than random search there
    (docs/benchmarks.md, "Parallel search quality")."""
    if spec.workers_hint == 1:
        return ""
    text = f", {spec.workers_hint} workers expected"
    if spec.n_trials < 3 * spec.workers_hint:
        text += (
            f"; {spec.n_trials} trials are fewer than 3 waves of them: most start before results exist (raise --trials)"
        )
    return text


def _plan(name: str, options: CreateOptions) -> tuple[StudySpec, list[dict], str]:
    """Check the options and inputs: the spec, the configurations to enqueue and a note on them."""
    from tuner import warm_start

    if options.overwrite and options.exist_ok:
        raise StudyError("--overwrite and --exist-ok contradict each other; pick one")
    check_study_name(name)
    objectives = options.objectives
    objectives = parse_objectives(objectives) if isinstance(objectives, str) else tuple(objectives)
    pruner = default_pruner(objectives) if options.pruner is None else options.pruner
    _check_data_options(options)
    space = SearchSpace.load(options.space_path or default_space_path())
    if options.fingerprint is not None:
        fingerprint = options.fingerprint
    else:
        assert options.data is not None
        fingerprint = _data_fingerprint(options.data, options.remove_aliens)
    spec = StudySpec(
        space=space,
        data_fingerprint=fingerprint,
        n_trials=options.trials,
        sampler=options.sampler,
        seed=options.seed,
        pruner=pruner,
        min_epochs=options.min_epochs,
        heartbeat_interval=options.heartbeat_interval,
        grace_period=options.grace_period,
        max_retry=options.max_retry,
        remove_aliens=options.remove_aliens,
        objectives=objectives,
        workers_hint=options.workers_hint,
    )
    queued, queue_note = warm_start.plan(space, list(options.enqueue), seed_config=options.seed_config)
    if len(queued) > options.trials:
        raise StudyError(f"{len(queued)} configurations to enqueue exceed the budget of {options.trials} trials")
    return spec, queued, queue_note


def _check_data_options(options: CreateOptions) -> None:
    """Exactly one of ``--data`` and ``--fingerprint``; a fingerprint must look like one."""
    if (options.data is None) == (options.fingerprint is None):
        raise StudyError("give exactly one of --data FILE.npz or --fingerprint HEX")
    if options.fingerprint is not None and not _FINGERPRINT.fullmatch(options.fingerprint):
        raise StudyError(
            f"--fingerprint {options.fingerprint!r} is not a data fingerprint: give the 64 lowercase hex "
            "digits `worker inspect-data FILE.npz` prints"
        )


def _data_fingerprint(data: Path, remove_aliens: bool) -> str:
    """The fingerprint of ``--data``, which must hold something to train on."""
    from contract.data import check_trainable, load_npz
    from contract.data_format import DataError

    loaded = load_npz(data, load_test=False, remove_aliens=remove_aliens)
    try:
        check_trainable(loaded.masks)  # else every trial would fail
    except DataError as exc:
        # Kept: the message of check_trainable does not say which file it is about.
        raise StudyError(f"--data {data}: {exc}") from None
    return loaded.fingerprint


def _check_same(name: str, spec: StudySpec, existing: StudySpec) -> None:
    """``--exist-ok`` keeps a study only if it was made for the same data and objectives."""
    if existing.data_fingerprint != spec.data_fingerprint:
        raise StudyError(
            f"study {name!r} exists with a different data fingerprint "
            f"({existing.data_fingerprint[:12]} vs {spec.data_fingerprint[:12]})"
        )
    if existing.objectives != spec.objectives:
        raise StudyError(
            f"study {name!r} exists with objectives {','.join(existing.objectives)}, not {','.join(spec.objectives)}"
        )


def _create_complete(rdb: RDBStorage, name: str, spec: StudySpec, queued: list[dict], *, replace: bool) -> None:
    """Create the study with its spec, visible under ``name`` only once it is whole.

    Optuna creates a study and sets its attributes in separate transactions, so a worker could
    load a study without a spec. The study is built under a private name and renamed in one
    statement. Replacing deletes the old study first: its workers then stop ("replaced or
    deleted") instead of writing into the new one.
    """
    building = f"{BUILDING_PREFIX}{uuid.uuid4().hex}"
    study = optuna.create_study(
        storage=rdb,
        study_name=building,
        directions=spec.directions,
        sampler=spec.make_sampler(),
        pruner=spec.make_pruner(),
    )
    from tuner import __version__

    try:
        study.set_user_attr(SPEC_ATTR, spec.to_attr())
        study.set_user_attr(
            "created",
            {
                "by": socket.gethostname(),
                "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "tuner_version": __version__,
                "optuna_version": optuna.__version__,
            },
        )
        for item in queued:  # exactly once, here: workers never enqueue
            study.enqueue_trial(item["params"], user_attrs={"enqueued_from": item["source"]})
        if replace:
            delete_study(rdb, name)
        rename_study(rdb, study_id(study), name)
    except BaseException:
        delete_study(rdb, building)  # never leave a half-made study
        raise


def check_study_name(name: str) -> None:
    """Refuse names Optuna would store but users could not type back (or the schema truncates).

    Raises:
        StudyError: empty, padded with spaces, or longer than the schema's column.
    """
    if not name.strip():
        raise StudyError("the study name is empty")
    if name != name.strip():
        raise StudyError(f"study name {name!r} starts or ends with whitespace")
    if len(name) > MAX_STUDY_NAME:
        raise StudyError(f"the study name is {len(name)} characters long; at most {MAX_STUDY_NAME} fit")
    if not name.isprintable():
        raise StudyError(f"study name {name!r} contains control characters")


def check_file_safe_name(name: str, option: str = "--study") -> None:
    """Refuse study names that cannot be used as part of a file name (``../x``, ``a/b``, ``.x``).

    ``tuner demo`` names its files after the study; a name with a separator would write
    outside ``TUNER_HOME``.

    Raises:
        StudyError: the name has characters other than letters, digits, ``.``, ``_``, ``-``,
            or starts with a dot.
    """
    if not _FILE_SAFE.fullmatch(name):
        raise StudyError(
            f"{option} {name!r}: names files here, so use letters, digits, '.', '_' or '-' "
            "(not starting with '.'), at most 100 characters"
        )


def open_study(name: str, storage_url: str | None) -> tuple[optuna.Study, str, RDBStorage]:
    """Open an existing study: (study, resolved url, its storage, for the caller to dispose of).

    Raises:
        StudyError: no such study; the message lists the studies that exist.
    """
    url = storage.resolve_url(storage_url)
    rdb = storage.open_storage(url, heartbeat_interval=None, role="coordinator")
    try:
        return optuna.load_study(study_name=name, storage=rdb), url, rdb
    except KeyError:
        error = unknown_study(name, rdb, url)
        rdb.engine.dispose()
        raise error from None


def unknown_study(name: str, rdb: RDBStorage, url: str) -> StudyError:
    """The error for a study name that is not in the database, listing the ones that are."""
    names = sorted(s.study_name for s in optuna.get_all_study_summaries(rdb, include_best_trial=False))
    known = ", ".join(names) if names else "none"
    return StudyError(f"no study {name!r} in {storage.mask_url(url)} (studies: {known})")


def load(name: str, storage_url: str | None) -> tuple[optuna.Study, StudySpec, str]:
    """Open an existing study created by ``tuner create``: (study, spec, resolved url)."""
    study, url, _ = open_study(name, storage_url)
    return study, StudySpec.of(study), url
