"""``tuner export``: the best trial as a training config ``worker train --config`` reads back.

The config is the one the worker recorded when it started the trial (sampled and fixed values
together), so the export is exactly what was trained, even if the study's search space file was
edited since. Only trials from older workers without that record fall back to rebuilding the
config from the trial's parameters and the study's space.

Files are written atomically (a temporary file in the same directory, then ``os.replace``): an
interrupted export never leaves a half-written config or model behind.
"""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
import math
import os
from pathlib import Path
import sys

import optuna
from optuna.trial import FrozenTrial

from contract import trial_attrs
from contract.artifacts import is_artifact_id, open_artifact_store
from contract.atomic import replacing
from contract.config import ConfigError, ConfigFormat, TrainConfig
from contract.confirm import Confirmed, summarize
from contract.pareto import Pick, pick_trial
from contract.study_spec import StudySpec
from contract.textfile import short_repr
from tuner.study import StudyError, load

FORMATS = tuple(f.value for f in ConfigFormat)


def export_best(
    name: str,
    *,
    storage: str | None,
    fmt: str | None = "yaml",
    output: Path | None = None,
    model: Path | None = None,
    artifact_dir: Path | None = None,
    pick: Pick | str = Pick(),
) -> TrainConfig:
    """Write the best trial's config to ``output`` (or stdout) and optionally download its model.

    In a study with two objectives (mIoU and a cost) "best" is the trial ``pick`` chooses from
    the Pareto front (:mod:`contract.pareto`).

    Args:
        fmt: ``yaml`` or ``json``; ``None`` picks json for an ``output`` ending in ``.json`` and
            yaml otherwise.
        model: where to save the best trial's uploaded ``.keras`` model (must not exist).
        artifact_dir: the artifact store the workers uploaded to (needed with ``model``).

    Returns:
        The exported config.

    Raises:
        ConfigError: unknown format, or a format that ``TrainConfig.load`` would misread.
        StudyError: unknown study, no completed trial, no saved model, unwritable output, a
            ``pick`` for a study with one objective.
        PickError: ``pick`` is not a pick rule.
        ArtifactDirError: ``--model`` with an unusable ``artifact_dir``.
    """
    fmt = _check_format(fmt, output)
    pick = Pick.parse(pick)
    if model is not None:
        _check_model_path(model, artifact_dir)
    study, spec, url = load(name, storage)
    from tuner.readers import check_pick

    check_pick(pick, len(study.directions), name)
    confirmations, chosen = _confirmed(url, name, pick)
    best = chosen or best_trial(study, pick)
    config = config_of(best, spec)
    text = render(
        config,
        fmt,
        study_name=name,
        trial=best,
        pick=pick,
        objectives=spec.objectives,
        confirmed=summarize(confirmations),
    )
    _write_outputs(text, output, best, model, artifact_dir)
    return config


def _write_outputs(
    text: str, output: Path | None, best: FrozenTrial, model: Path | None, artifact_dir: Path | None
) -> None:
    """The config (and with ``model`` the trial's model): the model lands only if the config was
    written too, so a failed export leaves neither."""
    if model is None:
        _emit(text, output, best)
        return
    assert artifact_dir is not None
    with downloaded_model(best, model, artifact_dir):
        _emit(text, output, best)
    _say(f"saved the model of trial {best.number} to {model}")


def _check_model_path(model: Path, artifact_dir: Path | None) -> None:
    """``--model``: a new ``.keras`` path, and the artifact store to download from."""
    if artifact_dir is None:
        raise StudyError("--model needs --artifact-dir (the artifact store the workers upload to)")
    if model.suffix != ".keras":
        raise StudyError(f"--model {model}: the saved model is a Keras archive; name it *.keras")
    if model.exists():
        raise StudyError(f"{model} already exists; choose another --model path or remove it")


def _emit(text: str, output: Path | None, best: FrozenTrial) -> None:
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    write_atomic(output, text)
    values = ", ".join(f"{v:.6g}" for v in best.values[1:])
    _say(
        f"wrote the config of trial {best.number} (value {best.values[0]:.4f}{', ' + values if values else ''}) "
        f"to {output}"
    )


def best_trial(study: optuna.Study, pick: Pick = Pick()) -> FrozenTrial:
    """The best trial; with two objectives, the one ``pick`` chooses from the Pareto front.
    (``--pick confirmed`` is chosen from the confirmation runs: :func:`_confirmed`.)

    Raises:
        StudyError: no completed trial, or a non-default ``pick`` for one objective.
    """
    from tuner.readers import check_pick

    check_pick(pick, len(study.directions), study.study_name)
    assert not pick.confirmed, "resolved by _confirmed"
    if len(study.directions) == 2:
        trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        picked = pick_trial(trials, study.directions, pick)
        if picked is None:
            raise StudyError(f"no completed trial yet in study {study.study_name!r}")
        return picked
    # The best finite first value (mIoU), lowest number on ties, as `tuner status` and `list` rank:
    # Optuna's best_trial would pick a hand-written inf, and refuses more than one objective.
    done = [
        t
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if t.values and all(math.isfinite(v) for v in t.values)
    ]
    if not done:
        raise StudyError(f"no completed trial yet in study {study.study_name!r}")
    sign = -1.0 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1.0
    return min(done, key=lambda t: (sign * t.values[0], t.number))


def _confirmed(url: str, name: str, pick: Pick) -> tuple[list[FrozenTrial], FrozenTrial | None]:
    """The study's confirmation trials and the trials they confirm (read as the readers do);
    with ``--pick confirmed`` also the chosen search trial, with all its attributes.

    Raises:
        ConfirmError: ``--pick confirmed`` before any configuration has its confirmation runs.
    """
    from storage.summaries import find_study, open_reader
    from tuner.confirm import confirmed_pick, read_confirmations

    engine = open_reader(url)
    try:
        head = find_study(engine, name)
        if head is None:
            raise StudyError(f"study {name!r} was deleted meanwhile")
        confirmations = read_confirmations(engine, head.study_id)
        chosen = confirmed_pick(engine, head.study_id, name)[0] if pick.confirmed else None
        return confirmations, chosen
    finally:
        engine.dispose()


def config_of(trial: FrozenTrial, spec: StudySpec) -> TrainConfig:
    """The config ``trial`` trained: its worker's record, else rebuilt from params and space;
    with the learning rate of each epoch up to its best (``lr_schedule``, for ``--all-data``)
    when its worker recorded them."""
    recorded = trial_attrs.config_of(trial)
    try:
        config = TrainConfig.from_dict(recorded) if recorded is not None else spec.space.config(trial.params)
    except ConfigError as exc:
        raise ConfigError(f"trial {trial.number}'s config is not usable: {exc}") from None
    schedule = trial_attrs.lr_schedule_of(trial)
    return config if schedule is None else config.replace(lr_schedule=schedule)


def render(
    config: TrainConfig,
    fmt: str,
    *,
    study_name: str,
    trial: FrozenTrial,
    pick: Pick | None = None,
    objectives: tuple[str, ...] = (),
    confirmed: list[Confirmed] | None = None,
) -> str:
    """The config text; YAML gets a comment header, JSON stays pure (``load`` rejects extra keys).

    A trial with two values (mIoU and a cost) gets the cost and the pick rule in its header;
    a study with ``tuner confirm`` runs gets one line per ``confirmed`` configuration.
    """
    body = config.dumps(fmt)
    if fmt != "yaml":
        return body
    values = list(trial.values or [None])
    if len(values) > 1:
        cost = objectives[1] if len(objectives) > 1 else "objective 1"
        header = [
            f"# Pareto pick ({pick or Pick()}) of study {study_name!r}, exported by `tuner export`.",
            f"# trial: {trial.number}",
            f"# value (validation mean IoU, classes 1-4): {values[0]!r}",
            f"# {cost}: {values[1]!r}",
        ]
    else:
        header = [
            f"# Best trial of study {study_name!r}, exported by `tuner export`.",
            f"# trial: {trial.number}",
            f"# value (validation mean IoU, classes 1-4): {values[0]!r}",
        ]
    header += [f"# IoU per class: {_per_class_text(trial)}"]
    if pick is not None and pick.confirmed:
        header[0] = (
            f"# Confirmed pick of study {study_name!r} (highest mean mIoU minus one standard error "
            "over its confirmation seeds), exported by `tuner export`."
        )
    if confirmed:
        header.append("# Confirmed configurations (tuner confirm; n, mean, sd, min over the confirmation seeds):")
        header += [f"#   {c.line()}" for c in confirmed]
    header += ["# Retrain with: worker train --config THIS_FILE --data DATA.npz"]
    if config.lr_schedule is not None:
        header += [
            "# Retrain on training + validation images together (no validation score then):",
            "#   worker train --config THIS_FILE --data DATA.npz --all-data --save final.keras",
            f"#   {len(config.lr_schedule)} epochs (the trial's best epoch), learning rates from lr_schedule",
        ]
    return "\n".join(header) + "\n" + body


def _per_class_text(trial: FrozenTrial) -> str:
    per_class = trial_attrs.per_class_iou_of(trial)
    if not per_class:
        return "not recorded"
    return " ".join(f"{c}={'n/a' if v is None else f'{v:.4f}'}" for c, v in sorted(per_class.items()))


@contextlib.contextmanager
def downloaded_model(trial: FrozenTrial, path: Path, artifact_dir: Path) -> Iterator[None]:
    """Download the trial's model to a temporary file; it becomes ``path`` if the body succeeds."""
    from optuna.artifacts import download_artifact
    from optuna.artifacts.exceptions import ArtifactNotFound

    artifact_id = trial.user_attrs.get(trial_attrs.MODEL_ARTIFACT)
    if not artifact_id:
        raise StudyError(f"best trial {trial.number} has no saved model; run workers with --artifact-dir")
    if not is_artifact_id(artifact_id):
        raise StudyError(
            f"--model: trial {trial.number}'s model artifact id {short_repr(artifact_id)} is not "
            "an artifact id (expected a UUID); refusing to read outside --artifact-dir"
        )
    store = open_artifact_store(artifact_dir, create=False)
    try:
        with replacing(path, suffix=path.suffix) as tmp:
            download_artifact(artifact_store=store, file_path=str(tmp), artifact_id=str(artifact_id))
            if path.exists():  # created meanwhile: do not clobber it
                raise StudyError(f"{path} already exists; choose another --model path or remove it")
            yield
    except ArtifactNotFound:
        raise StudyError(
            f"model artifact {artifact_id} of trial {trial.number} is not in {artifact_dir}; "
            "is that the directory the workers upload to?"
        ) from None
    except OSError as exc:
        raise StudyError(f"cannot write {path}: {exc.strerror}") from None


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so readers see the old file or the new one, never half."""
    try:
        with replacing(path) as tmp:
            with open(tmp, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
    except OSError as exc:
        raise StudyError(f"cannot write {path}: {exc.strerror}") from None


def _check_format(fmt: str | None, output: Path | None) -> str:
    suffix = output.suffix.lower() if output is not None else ""
    if fmt is None:
        return "json" if suffix == ".json" else "yaml"
    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; use yaml or json")
    if fmt == "yaml" and suffix == ".json":
        # TrainConfig.load picks the parser by suffix: YAML in a .json file would not load.
        raise ConfigError(f"{output} ends in .json but the format is yaml; add --format json")
    return fmt


def _say(message: str) -> None:
    """Progress goes to stderr so that stdout carries only the config (pipe-friendly)."""
    print(message, file=sys.stderr)
