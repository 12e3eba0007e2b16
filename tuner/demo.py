"""``tuner demo``: the whole system on one machine in a few minutes.

It does what a team does across machines, with real processes: generate a data set, create a
study from a (tiny) search-space file, start worker processes that pull trials from the shared
database, wait, then show the status and the best configuration. Nothing is faked; only the
sizes are small.
"""

from __future__ import annotations

import os
from pathlib import Path
import signal
import subprocess
import sys
import threading

import optuna

from contract.pareto import Pick
from contract.study_spec import CreateOptions, StudySpec, parse_objectives
import storage
from storage.url import default_home, without_file_password
from tuner.study import (
    StudyError,
    check_file_safe_name,
    create_study,
    demo_space_path,
    load,
)

DEMO_SEED = 0
#: Study user attribute that marks a study as the demo's own (safe to replace on the next run).
DEMO_ATTR = "tuner_demo"


def run_demo(
    *,
    study: str,
    workers: int,
    trials: int,
    images: int,
    storage_url: str | None,
    objectives: str = ",".join(StudySpec.objectives),
    pick: Pick = Pick(),
) -> int:
    """Run the local search; return 0 when at least one trial completed.

    With two ``objectives`` the study has no pruner and the exported configuration is the
    trial ``pick`` chooses from the Pareto front.
    """
    from contract.synth import write_npz

    goal = _check_arguments(study, objectives, pick)
    url = storage.resolve_url(storage_url)
    _check_replaceable(study, url)  # also fails fast, before any file is written, if unreachable
    home = default_home()
    home.mkdir(parents=True, exist_ok=True)
    data = home / f"demo-{images}.npz"
    if not data.exists():
        print(f"generating {images} synthetic Mars images -> {data}", flush=True)
        write_npz(data, images, seed=DEMO_SEED)
    options = CreateOptions(
        storage_url=url,
        data=data,
        fingerprint=None,
        space_path=demo_space_path(),
        trials=trials,
        seed=DEMO_SEED,
        pruner="hyperband" if len(goal) == 1 else None,
        heartbeat_interval=5,
        grace_period=30,
        max_retry=1,
        overwrite=True,
        objectives=goal,
        seed_config=False,  # the seed team's configuration does not fit the demo's tiny space
    )
    print(create_study(study, options), flush=True)
    created, _, _ = load(study, url)
    created.set_user_attr(DEMO_ATTR, True)

    print(f"starting {workers} worker process(es); Ctrl-C stops them cleanly", flush=True)
    codes = _run_workers(workers, study, data, url)
    print(flush=True)
    return _show_results(study, url, pick, home, data, codes)


def _check_arguments(study: str, objectives: str, pick: Pick) -> tuple[str, ...]:
    """The objectives; the study name and ``pick`` checked before anything is written (the files
    are named after the study)."""
    from tuner.readers import check_pick

    check_file_safe_name(study)
    goal = parse_objectives(objectives)
    check_pick(pick, len(goal), study)
    if pick.confirmed:  # it would fail at the end, after the whole search
        raise StudyError(
            "--pick confirmed needs `tuner confirm` runs, which the demo does not make; run the demo, "
            f"then `tuner confirm {study}`, workers, and `tuner export {study} --pick confirmed`"
        )
    return goal


def _show_results(study: str, url: str, pick: Pick, home: Path, data: Path, codes: list[int]) -> int:
    """The status, the best configuration and the report after the workers ended; the exit code:
    0 when a trial completed and every worker exited 0."""
    from tuner.export import export_best
    from tuner.status import print_status

    print_status(study, url, pick=pick)
    best_file = home / f"{study}-best.yaml"
    try:
        export_best(study, storage=url, fmt="yaml", output=best_file, pick=pick)
    except Exception as exc:  # noqa: BLE001 - report, do not hide the workers' exit codes
        print(f"no best configuration: {exc}", file=sys.stderr)
        return 1
    print(f"\nbest configuration (retrain with: worker train --config {best_file} --data {data}):\n")
    print(best_file.read_text())
    _write_report(study, url, home / f"{study}-report.html", pick)
    completed, _, _ = load(study, url)
    n_complete = sum(1 for t in completed.get_trials(deepcopy=False) if t.state.name == "COMPLETE")
    return 0 if n_complete and all(code == 0 for code in codes) else 1


def _write_report(study: str, url: str, output: Path, pick: Pick) -> None:
    """The search as figures, and how to make the page again: what a new user looks at next."""
    from contract.errors import TunerError
    from tuner.report import write_report

    try:
        write_report(study, storage_url=url, output=output, pick=pick)
    except TunerError as exc:  # the search itself succeeded: say why there is no page, go on
        print(f"no report: {exc}", file=sys.stderr)
        return
    print(
        f"report with figures (open it in a browser): {output}\n"
        f"  write it again, e.g. while workers run: tuner report {study} -o {output.name}"
    )


def _check_replaceable(study: str, url: str) -> None:
    """The demo re-creates its study on every run; never a study it did not make itself.

    ``tuner demo`` honours ``TUNER_STORAGE``, so on a team database a name clash would otherwise
    delete a real study.

    Raises:
        StudyError: a study of that name exists and was not created by ``tuner demo``.
        StorageError: the database cannot be reached.
    """
    if storage.current_revision(url) is None:
        return
    rdb = storage.open_storage(url, heartbeat_interval=None, role="coordinator")
    try:
        summaries = optuna.get_all_study_summaries(rdb, include_best_trial=False)
    finally:
        rdb.engine.dispose()
    for summary in summaries:
        if summary.study_name == study and not summary.user_attrs.get(DEMO_ATTR):
            raise StudyError(
                f"study {study!r} in {storage.mask_url(url)} was not created by `tuner demo`; "
                "the demo replaces its study on every run, so choose another --study"
            )


def _run_workers(n: int, study: str, data: Path, url: str) -> list[int]:
    """Start ``n`` ``worker run`` processes and relay their output with a prefix.

    The storage URL travels in the environment, not on the command line, so a password never
    shows in ``ps``; a password read from ``TUNER_DB_PASSWORD_FILE`` stays in that file (the
    workers inherit the variable and read it themselves), out of their environment.
    """
    env = {**os.environ, "TUNER_STORAGE": without_file_password(url), "PYTHONUNBUFFERED": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "worker", "run", "--study", study, "--data", str(data)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for _ in range(n)
    ]
    relays = [threading.Thread(target=_relay, args=(p, f"w{i}"), daemon=True) for i, p in enumerate(procs)]
    for relay in relays:
        relay.start()
    try:
        for proc in procs:
            proc.wait()
    except KeyboardInterrupt:
        print("stopping workers (their current trials are failed and re-queued)...", flush=True)
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait()
    for relay in relays:
        relay.join(timeout=5)
    return [proc.returncode for proc in procs]


def _relay(proc: subprocess.Popen[str], tag: str) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        if "cuda" in line.lower() or line.startswith(("WARNING: All log messages", "E0000", "I0000", "W0000")):
            continue  # TensorFlow's start-up chatter about absent GPUs
        print(f"{tag} | {line}", end="", flush=True)
