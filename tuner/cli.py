"""``tuner``: the coordinator's command line.

Every command takes ``--storage URL`` (or ``TUNER_STORAGE``); with neither, the embedded SQLite
default under ``./.tuner`` is used, so a single machine needs no database server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from contract.config import ConfigFormat
from contract.options import ArtifactDirOpt, CliGroup, StorageOpt
from contract.pareto import Pick
from contract.study_spec import CreateOptions, Pruner, Sampler, StudySpec
from tuner.cli_db import db_app

app = typer.Typer(
    name="tuner",
    help="Coordinate a distributed hyperparameter search for Mars-terrain segmentation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=CliGroup,
)
app.add_typer(db_app, name="db")

PickOpt = Annotated[
    str,
    typer.Option(
        "--pick",
        metavar="RULE",
        help="Which trial counts as best. Any study: best-miou (the highest single run) or confirmed (of the "
        "configurations `tuner confirm` re-ran, the highest mean mIoU minus one standard error over "
        "their confirmation seeds; needs 2 complete runs). Two-objective studies also: 'smallest-within D' "
        "(the Pareto front's smallest cost whose mIoU is at most D below the best, e.g. 0.01).",
    ),
]


def _version_callback(value: bool) -> None:
    if value:
        from tuner import __version__

        typer.echo(f"tuner {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """Coordinate a distributed hyperparameter search for Mars-terrain segmentation."""
    import optuna

    # Our own messages say what happened; Optuna's INFO lines would repeat them.
    optuna.logging.set_verbosity(optuna.logging.WARNING)


# `tuner create`'s options, named here so that its signature reads as a list.
DataOpt = Annotated[
    Path | None,
    typer.Option(
        "--data",
        envvar="TUNER_DATA",
        show_envvar=True,
        help="The challenge .npz; its fingerprint is recorded so workers with other data are refused.",
    ),
]
FingerprintOpt = Annotated[str | None, typer.Option(help="Record this data fingerprint instead of reading --data.")]
SpaceOpt = Annotated[Path | None, typer.Option(help="Search-space YAML. Default: the seed's ranges (shipped).")]
TrialsOpt = Annotated[int, typer.Option(min=1, help="Trial budget for the whole study, across all workers.")]
SamplerOpt = Annotated[Sampler, typer.Option(case_sensitive=False, help="How workers draw configurations.")]
SeedOpt = Annotated[int, typer.Option(help="Sampler seed (each worker derives its own from it).")]
PrunerOpt = Annotated[
    Pruner | None,
    typer.Option(
        case_sensitive=False,
        show_default=False,
        help="Early stopping of unpromising trials (resource: epochs). "
        f"Default: {StudySpec.pruner}; none with several objectives "
        "(nothing else is allowed there).",
    ),
]
MinEpochsOpt = Annotated[
    int, typer.Option(min=1, help="Epochs a trial trains before it can be pruned (Hyperband's min resource).")
]
HeartbeatOpt = Annotated[int, typer.Option(min=1, help="Seconds between worker heartbeats.")]
GraceOpt = Annotated[
    int, typer.Option(min=1, help="Seconds without heartbeat before a running trial is failed and retried.")
]
MaxRetryOpt = Annotated[int, typer.Option(min=0, help="How often a trial of a dead worker is retried.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Delete an existing study of that name first.")]
ExistOkOpt = Annotated[
    bool, typer.Option("--exist-ok", help="If the study exists, keep it and exit 0 (for re-runnable init jobs).")
]
EnqueueOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--enqueue",
        metavar="FILE.yaml",
        help="Enqueue this training config as a first trial (repeatable); it must fit the space.",
    ),
]
SeedConfigOpt = Annotated[
    bool, typer.Option("--seed-config/--no-seed-config", help="Enqueue the seed team's best configuration.")
]
KeepAliensOpt = Annotated[
    bool, typer.Option("--keep-aliens", help="Do not remove repeated-mask 'alien' images (recorded in the study).")
]
ObjectivesOpt = Annotated[
    str,
    typer.Option(
        metavar="LIST",
        help="What to optimise: miou, or accuracy against cost: miou,params (parameter count) or "
        "miou,latency (inference ms per image on the worker's device). Two objectives: "
        "a Pareto front, no pruning; --sampler tpe or nsga2.",
    ),
]
DEFAULT_OBJECTIVES = ",".join(StudySpec.objectives)
WorkersHintOpt = Annotated[
    int,
    typer.Option(
        min=1,
        metavar="N",
        help="Workers you expect to run at once (recorded; warns when --trials is under 3 waves) "
        "(docs/benchmarks.md, 'Parallel search quality').",
    ),
]


@app.command()
def create(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Study name.")],
    data: DataOpt = None,
    fingerprint: FingerprintOpt = None,
    space: SpaceOpt = None,
    trials: TrialsOpt = 50,
    sampler: SamplerOpt = Sampler(StudySpec.sampler),
    seed: SeedOpt = StudySpec.seed,
    pruner: PrunerOpt = None,
    min_epochs: MinEpochsOpt = StudySpec.min_epochs,
    heartbeat_interval: HeartbeatOpt = StudySpec.heartbeat_interval,
    grace_period: GraceOpt = StudySpec.grace_period,
    max_retry: MaxRetryOpt = StudySpec.max_retry,
    overwrite: OverwriteOpt = False,
    exist_ok: ExistOkOpt = False,
    storage: StorageOpt = None,
    enqueue: EnqueueOpt = None,
    seed_config: SeedConfigOpt = True,
    keep_aliens: KeepAliensOpt = False,
    objectives: ObjectivesOpt = DEFAULT_OBJECTIVES,
    workers_hint: WorkersHintOpt = StudySpec.workers_hint,
) -> None:
    """Create a study from a search-space file (schema is created if missing)."""
    from tuner.study import create_study

    summary = create_study(
        name,
        CreateOptions(
            storage_url=storage,
            data=data,
            fingerprint=fingerprint,
            space_path=space,
            trials=trials,
            sampler=sampler.value,
            seed=seed,
            pruner=pruner.value if pruner is not None else None,
            min_epochs=min_epochs,
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            max_retry=max_retry,
            overwrite=overwrite,
            exist_ok=exist_ok,
            enqueue=tuple(enqueue or ()),
            seed_config=seed_config,
            remove_aliens=not keep_aliens,
            objectives=objectives,
            workers_hint=workers_hint,
        ),
    )
    typer.echo(summary)


@app.command("list")
def list_studies(storage: StorageOpt = None) -> None:
    """List the studies in the database with their trial counts and best values."""
    from tuner.status import print_study_list

    print_study_list(storage)


@app.command()
def status(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Study name.")],
    storage: StorageOpt = None,
    pick: PickOpt = str(Pick()),
) -> None:
    """Show a study's trial counts per state, best value, and running trials with host and age.

    A two-objective study shows the size of its Pareto front and the trial --pick chooses.
    """
    from tuner.status import print_status

    print_status(name, storage, pick=Pick.parse(pick))


@app.command()
def export(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Study name.")],
    format: Annotated[
        ConfigFormat | None,
        typer.Option("--format", case_sensitive=False, help="Default: from the -o suffix, else yaml."),
    ] = None,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write here instead of stdout.")] = None,
    model: Annotated[
        Path | None,
        typer.Option(help="Also download the best trial's saved model (.keras) here, if a worker uploaded one."),
    ] = None,
    artifact_dir: ArtifactDirOpt = None,
    storage: StorageOpt = None,
    pick: PickOpt = str(Pick()),
) -> None:
    """Export the best trial's full training config, readable by `worker train --config`.

    For a two-objective study the trial is the one --pick chooses from the Pareto front.
    """
    from tuner.export import export_best

    export_best(
        name,
        storage=storage,
        fmt=format.value if format else None,
        output=output,
        model=model,
        artifact_dir=artifact_dir,
        pick=Pick.parse(pick),
    )


@app.command()
def confirm(
    name: Annotated[str, typer.Argument(metavar="STUDY", help="Study name.")],
    top: Annotated[int, typer.Option("--top", min=1, metavar="K", help="How many of the best configurations.")] = 3,
    seeds: Annotated[
        int, typer.Option("--seeds", min=1, metavar="S", help="Confirmation runs (training seeds) per configuration.")
    ] = 3,
    storage: StorageOpt = None,
) -> None:
    """Re-run the K best configurations with S more training seeds each, as trials of the same study.

    Running workers take them next (no change to their command); they take no slot of the search
    budget and are never pruned. Running it again queues only what is missing (a larger --seeds:
    the difference). Two-objective studies: the K best by Pareto rank, then mIoU. `tuner status`,
    `report` and `export` then show each configuration's n, mean, sd and minimum mIoU, and
    --pick confirmed chooses by mean minus one standard error.
    """
    from tuner.confirm import confirm as run_confirm
    from tuner.confirm import describe

    done = run_confirm(name, storage_url=storage, top=top, seeds=seeds)
    typer.echo(describe(name, done))


@app.command()
def dashboard(
    target: Annotated[
        str | None, typer.Argument(metavar="TARGET", help="A study name (on --storage) or a storage URL.")
    ] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on; 0.0.0.0 exposes it to the network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8080,
    artifact_dir: ArtifactDirOpt = None,
    storage: StorageOpt = None,
) -> None:
    """Open optuna-dashboard on the study database (the schema is created first if missing)."""
    from tuner.dashboard import serve

    serve(target, storage=storage, host=host, port=port, artifact_dir=artifact_dir)


@app.command()
def demo(
    workers: Annotated[int, typer.Option(min=1, help="Local worker processes.")] = 2,
    trials: Annotated[int, typer.Option(min=1, help="Trial budget.")] = 8,
    images: Annotated[int, typer.Option(min=16, help="Synthetic images to generate.")] = 160,
    study: Annotated[str, typer.Option(help="Study name.")] = "demo",
    storage: StorageOpt = None,
    objectives: Annotated[
        str, typer.Option(metavar="LIST", help="miou, or miou,params / miou,latency for accuracy against cost.")
    ] = ",".join(StudySpec.objectives),
    pick: PickOpt = str(Pick()),
) -> None:
    """Run a small local search end to end: synthetic data, a tiny space, local workers.

    Uses the embedded SQLite database unless --storage is given, then prints the best config
    (with two objectives: the trial --pick chooses from the Pareto front).
    """
    from tuner.demo import run_demo

    code = run_demo(
        study=study,
        workers=workers,
        trials=trials,
        images=images,
        storage_url=storage,
        objectives=objectives,
        pick=Pick.parse(pick),
    )
    raise typer.Exit(code)


@app.command()
def report(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Study name.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="The HTML file to write.")],
    artifact_dir: ArtifactDirOpt = None,
    storage: StorageOpt = None,
    pick: PickOpt = str(Pick()),
) -> None:
    """Write one self-contained HTML report of a study (opens offline; plots embedded).

    With --artifact-dir, the best trial's validation images (if its worker saved them) are embedded.
    A two-objective study gets its Pareto front drawn, and "best" is the trial --pick chooses.
    """
    from tuner.report import write_report

    path = write_report(name, storage_url=storage, output=output, artifact_dir=artifact_dir, pick=Pick.parse(pick))
    typer.echo(f"wrote {path}")
