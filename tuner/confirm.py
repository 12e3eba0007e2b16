"""``tuner confirm``: queue the best configurations again, with more seeds, for the workers.

The K best search trials (two objectives: by Pareto rank, then mIoU; see
:func:`contract.confirm.top_trials`) are enqueued again S times each, with the training seeds
:func:`contract.confirm.seeds_for` gives, as trials of the same study marked with the trial they
confirm and their seed. Workers take queued trials before new ones and with no change to their
command; a confirmation trial never takes a search slot (``worker/budget.py``) and is never pruned.

The missing (trial, seed) pairs are computed and queued under the study's budget lock, the one
workers ask under: running the command again with the same arguments queues nothing, a larger
``--seeds`` queues the difference, and two coordinators at once cannot both queue the same pair.

Configurations once confirmed stay chosen: the K are the configurations confirmed before (best
first), then the best not yet confirmed. So a search still running when ``tuner confirm`` was
first called cannot make a second call with the same arguments queue other configurations; a
better trial found since is named in the output (``--top K+1`` confirms it too).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from optuna.trial import FrozenTrial, TrialState
import sqlalchemy

from contract import trial_attrs
from contract.confirm import Confirmed, ConfirmError, pick_confirmed, seeds_for, summarize, top_trials
from contract.study_spec import StudySpec
from storage.budget_lock import budget_lock
from storage.counts import user_attr_pairs
from storage.optuna_internals import trial_id
from storage.summaries import marked_trial_ids
from storage.trial_reader import load_trials
from tuner.study import open_study

if TYPE_CHECKING:
    import optuna
    from optuna.storages import RDBStorage


@dataclasses.dataclass(frozen=True)
class Queued:
    """What ``tuner confirm`` did for one configuration."""

    trial: FrozenTrial  # the search trial confirmed
    seeds: tuple[int, ...]  # all its confirmation seeds asked for
    added: tuple[int, ...]  # those queued now (the others were queued or run before)
    passed_over: tuple[FrozenTrial, ...] = ()  # better trials not confirmed, as the K were confirmed before


def confirm(name: str, *, storage_url: str | None, top: int, seeds: int) -> list[Queued]:
    """Queue the missing confirmation trials of the ``top`` best configurations; what was done.

    Raises:
        ConfirmError: ``top`` or ``seeds`` < 1, no complete search trial, fewer than ``top``,
            or a study that searches ``seed`` itself.
        StudyError: no such study, or one not made by ``tuner create``.
        storage.StorageError: the database is unreachable, or the lock could not be had.
    """
    if top < 1 or seeds < 1:
        raise ConfirmError(f"--top and --seeds must be >= 1, got --top {top} --seeds {seeds}")
    study, url, rdb = open_study(name, storage_url)
    try:
        spec = StudySpec.of(study)
        if "seed" in spec.space.params:
            raise ConfirmError(
                f"study {name!r} searches the training seed itself; confirmation runs vary the "
                "seed, so its space must leave seed fixed"
            )
        study_id = rdb.get_study_id_from_name(name)
        ranked = _ranked(rdb, study, study_id, top)
        with budget_lock(rdb, url, name, grace_period=float(spec.grace_period)):
            # Read inside the lock's transaction: what another coordinator queued is seen or waited for.
            have = {(a, b) for a, b in user_attr_pairs(rdb, study_id, trial_attrs.CONFIRMS, trial_attrs.CONFIRM_SEED)}
            confirmed_before = {number for number, _ in have}
            chosen = (
                [t for t in ranked if t.number in confirmed_before]
                + [t for t in ranked if t.number not in confirmed_before]
            )[:top]
            passed_over = tuple(t for t in ranked[:top] if t.number not in {c.number for c in chosen})
            done = []
            for trial in chosen:
                wanted_seeds = tuple(seeds_for(_base_seed(trial, spec), seeds))
                added = tuple(s for s in wanted_seeds if (trial.number, s) not in have)
                for seed in added:
                    study.enqueue_trial(
                        dict(trial.params),
                        user_attrs={trial_attrs.CONFIRMS: trial.number, trial_attrs.CONFIRM_SEED: seed},
                    )
                done.append(Queued(trial=trial, seeds=wanted_seeds, added=added, passed_over=passed_over))
        return done
    finally:
        rdb.engine.dispose()


def _ranked(rdb: RDBStorage, study: optuna.Study, study_id: int, top: int) -> list[FrozenTrial]:
    """The complete search trials, best first (:func:`top_trials`); at least ``top`` of them."""
    name = study.study_name
    complete = load_trials(
        rdb.engine,
        study_id,
        states=(TrialState.COMPLETE,),
        intermediate=False,
        user_attr_keys=(trial_attrs.CONFIRMS, trial_attrs.CONFIRM_SEED, trial_attrs.CONFIG, trial_attrs.MIOU),
    )
    ranked = top_trials(complete, study.directions, len(complete))
    if not ranked:
        raise ConfirmError(f"no complete search trial yet in study {name!r}: nothing to confirm")
    if len(ranked) < top:
        raise ConfirmError(
            f"--top {top}: study {name!r} has only {len(ranked)} complete search trial(s); "
            f"wait for more, or use --top {len(ranked)}"
        )
    return ranked


def describe(name: str, done: list[Queued]) -> str:
    """What ``tuner confirm`` prints: one line per configuration and a total."""
    lines = []
    for item in done:
        values = item.trial.values or []
        cost = f", cost {values[1]:.6g}" if len(values) > 1 else ""
        seeds = ", ".join(map(str, item.seeds))
        state = (f"queued {len(item.added)} new" if item.added else "nothing new") + (
            f", {len(item.seeds) - len(item.added)} queued or run before" if len(item.added) < len(item.seeds) else ""
        )
        lines.append(f"trial {item.trial.number} (mIoU {values[0]:.4f}{cost}): seeds {seeds}: {state}")
    added = sum(len(i.added) for i in done)
    passed_over = done[0].passed_over if done else ()
    if passed_over:
        better = ", ".join(f"trial {t.number} ({t.values[0]:.4f})" for t in passed_over)
        lines.append(
            f"note: {better} now rank(s) in the top {len(done)} but the configurations confirmed before "
            f"stay chosen; --top {len(done) + len(passed_over)} confirms it too"
        )
    lines.append(
        f"queued {added} confirmation trial(s) in study {name!r}; they take no slot of the search budget "
        "and are never pruned. Running workers take them next; if none is running, start workers with "
        f"their usual command. See the results with `tuner status {name}`."
    )
    return "\n".join(lines)


#: What the summaries read of each confirmation trial and confirmed search trial.
SUMMARY_ATTRS = (trial_attrs.CONFIRMS, trial_attrs.CONFIRM_SEED, trial_attrs.MIOU, trial_attrs.PER_CLASS_IOU)


def read_confirmations(engine: sqlalchemy.Engine, study_id: int) -> list[FrozenTrial]:
    """The study's confirmation trials (every state) and the search trials they confirm, with
    :data:`SUMMARY_ATTRS` only: two small queries plus the trials, however large the study."""
    ids = marked_trial_ids(engine, study_id, trial_attrs.CONFIRMS)
    if not ids:
        return []
    return load_trials(engine, study_id, trial_ids=ids, user_attr_keys=SUMMARY_ATTRS, intermediate=False)


def read_confirmed(engine: sqlalchemy.Engine, study_id: int) -> list[Confirmed]:
    """Per confirmed configuration: n, mean, sd, min, per-class means (see contract/confirm.py)."""
    return summarize(read_confirmations(engine, study_id))


def confirmed_pick(engine: sqlalchemy.Engine, study_id: int, study_name: str) -> tuple[FrozenTrial, Confirmed]:
    """The search trial ``--pick confirmed`` chooses, read again with all its attributes.

    Raises:
        ConfirmError: no configuration has enough complete confirmation runs yet.
    """
    chosen, summary = pick_confirmed(read_confirmations(engine, study_id), study_name)
    full = load_trials(engine, study_id, trial_ids=[trial_id(chosen)], intermediate=False)
    return full[0], summary


def _base_seed(trial: FrozenTrial, spec: StudySpec) -> int:
    """The seed the search trial trained with: its worker's record, else the space's."""
    recorded = trial_attrs.config_of(trial)
    if recorded is not None and isinstance(recorded.get("seed"), int):
        return int(recorded["seed"])
    return spec.space.config(trial.params).seed
