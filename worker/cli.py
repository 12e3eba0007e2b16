"""``worker``: the command line of a training machine (one process per GPU).

TensorFlow is imported only by the commands that train, so ``--help`` and ``synth-data`` are
instant.
"""

from __future__ import annotations

import enum
import math
import os
from pathlib import Path
import signal
from typing import TYPE_CHECKING, Annotated

import typer

from contract.errors import first_line
from contract.options import ArtifactDirOpt, CliGroup, StorageOpt
from contract.options import fail as _fail
from worker.predict import DEFAULT_BATCH as PREDICT_BATCH
from worker.predict import DEFAULT_SET as PREDICT_SET
from worker.predict import PNG_EACH_MAX
from worker.predict import SETS as PREDICT_SETS
from worker.training.backend import DEFAULT_COMPILE_CACHE, ENV_COMPILE_CACHE
from worker.training.quiet import silence_native_logs

if TYPE_CHECKING:
    from worker.predict import Summary

# TensorFlow's C++ log lines (no CUDA device, oneDNN notes, E0000 tf.data NodeDef mismatches)
# bury the progress lines; before any TensorFlow import.
silence_native_logs()

app = typer.Typer(
    name="worker",
    help="Train Multipath UNets for a shared study, or one config on its own.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=CliGroup,
)

DataOpt = Annotated[
    Path,
    typer.Option(
        "--data",
        envvar="TUNER_DATA",
        show_envvar=True,
        help="The challenge .npz (training_set (N,2,64,128)).",
    ),
]
#: ``--set``: the sets of the challenge file.
PredictSet = enum.Enum("PredictSet", {name: name for name in PREDICT_SETS}, type=str)  # type: ignore[misc]
GpuOpt = Annotated[
    int | None,
    typer.Option(
        "--gpu",
        envvar="TUNER_GPU",
        show_envvar=True,
        min=0,
        help="Pin this process to one GPU index. Default: first GPU if any, else CPU.",
    ),
]


@app.command("synth-data")
def synth_data(
    out: Annotated[Path, typer.Argument(metavar="OUT.npz", help="Output .npz path.")],
    n: Annotated[int, typer.Option("--n", min=8, help="Training images.")] = 500,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    aliens: Annotated[
        int | None, typer.Option(min=0, help="Injected repeated-mask outliers (default: a few percent).")
    ] = None,
    test: Annotated[int, typer.Option(min=0, help="Unlabelled test images.")] = 0,
) -> None:
    """Write a synthetic data set in exactly the challenge's .npz format."""
    from contract.synth import MAX_IMAGES, write_npz

    if out.suffix != ".npz":
        raise _fail(f"{out}: output must end in .npz")
    for option, value in (("--n", n), ("--test", test)):
        if value > MAX_IMAGES:
            raise _fail(f"{option} {value}: at most {MAX_IMAGES} images per file")
    try:
        summary = write_npz(out, n, seed=seed, n_aliens=aliens, n_test=test)
    except OSError as exc:
        raise _fail(f"cannot write {out}: {exc.strerror}") from None
    shares = ", ".join(f"{name} {share:.1%}" for name, share in summary["class_shares"].items())
    typer.echo(
        f"wrote {out}: {summary['n']} training images ({summary['n_aliens']} repeated-mask aliens, "
        f"{summary['big_rock_images']} with big rock), {summary['n_test']} test images, seed {seed}"
    )
    typer.echo(f"class shares: {shares}")


@app.command("inspect-data")
def inspect_data(data: Annotated[Path, typer.Argument(metavar="DATA.npz", help="The challenge .npz.")]) -> None:
    """Validate a data file and print its size, aliens removed, class shares and fingerprint."""
    from contract.data import class_pixel_shares, load_npz

    loaded = load_npz(data)
    shares = ", ".join(f"{c}:{s:.2%}" for c, s in enumerate(class_pixel_shares(loaded.masks)))
    typer.echo(f"images:       {len(loaded)} (aliens removed: {loaded.aliens_removed})")
    typer.echo(f"test images:  {0 if loaded.test_images is None else len(loaded.test_images)}")
    typer.echo(f"class shares: {shares}")
    typer.echo(f"fingerprint:  {loaded.fingerprint}")


@app.command()
def train(
    config: Annotated[
        Path, typer.Option("--config", help="Training config (.yaml or .json), e.g. from `tuner export`.")
    ],
    data: DataOpt,
    save: Annotated[Path | None, typer.Option(help="Save the best model here (.keras).")] = None,
    result_json: Annotated[Path | None, typer.Option("--result", help="Write the result as JSON here.")] = None,
    gpu: GpuOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No per-epoch progress.")] = False,
    all_data: Annotated[
        bool,
        typer.Option(
            "--all-data",
            help="Train on training + validation images together (needs --save): the "
            "final model. Epochs and learning rates replay the trial (lr_schedule, "
            "written by tuner export). Such a model has no validation score.",
        ),
    ] = False,
) -> None:
    """Train one configuration and print its validation mean IoU (classes 1-4)."""
    from worker.cli_train import check_train_outputs, report_result, run_all_data, trainable

    check_train_outputs(save, result_json, all_data)
    cfg, loaded = trainable(config, data)

    from worker.training.device import configure
    from worker.training.train import train as run_training

    device = configure(gpu, mixed_precision=cfg.mixed_precision)
    if all_data:
        run_all_data(cfg, loaded, save, result_json, device, quiet)
        return
    try:
        run_training(
            cfg,
            loaded,
            verbose=not quiet,
            save_path=save,
            device=device,
            on_result=lambda result: report_result(result, result_json),
        )
    except OSError as exc:
        if save is None:
            raise
        raise _fail(f"--save {save}: cannot save the model: {exc.strerror or first_line(exc, limit=200)}") from None
    if save is not None:
        typer.echo(f"model saved to {save}")


def _finite_seconds(value: float) -> float:
    """A duration option: a finite number >= 0 (``inf`` would wait forever, NaN never compares)."""
    if not math.isfinite(value) or value < 0:
        raise typer.BadParameter(f"need a finite number of seconds >= 0, not {value}")
    return value


# `worker predict`'s options, named here so that its signature reads as a list.
ModelsOpt = Annotated[
    list[Path],
    typer.Option(
        "--model",
        help="A saved model (.keras from worker train --save, worker run --artifact-dir or "
        "tuner export --model); repeat it for an ensemble (mean of the softmax).",
    ),
]
MasksOutOpt = Annotated[Path, typer.Option("-o", "--output", help="Write the masks here (.npz, key 'masks').")]
SetOpt = Annotated[
    PredictSet, typer.Option("--set", help="The set of --data to predict; a labelled set is also scored.")
]
PngOpt = Annotated[
    Path | None,
    typer.Option(
        "--png",
        metavar="DIR",
        help=f"Also write PNGs (image | prediction): one per image up to "
        f"{PNG_EACH_MAX} images, else a contact sheet of the first "
        f"{PNG_EACH_MAX}.",
    ),
]
TtaOpt = Annotated[
    bool | None,
    typer.Option(
        "--tta/--no-tta",
        help="Flip test-time augmentation. Default: as each model's trial was scored (recorded in the model file).",
        show_default=False,
    ),
]
BatchOpt = Annotated[int, typer.Option("--batch", min=1, help="Images per forward pass.")]
ProbabilitiesOpt = Annotated[
    bool, typer.Option("--probabilities", help="Also write the mean probabilities (N, 64, 128, 5) as float16.")
]


@app.command()
def predict(
    model: ModelsOpt,
    data: DataOpt,
    output: MasksOutOpt,
    set_name: SetOpt = PredictSet(PREDICT_SET),  # noqa: B008 - an enum member
    png: PngOpt = None,
    tta: TtaOpt = None,
    batch: BatchOpt = PREDICT_BATCH,
    probabilities: ProbabilitiesOpt = False,
    gpu: GpuOpt = None,
) -> None:
    """Predict masks for the test set (or a labelled set, with its score) with saved models."""
    from worker.predict import predict_file

    summary = predict_file(
        model,
        data,
        output,
        set_name=set_name.value,
        tta=tta,
        batch=batch,
        probabilities=probabilities,
        png_dir=png,
        gpu=gpu,
        progress=True,
        say=lambda line: typer.echo(line, err=True),
    )
    _print_predicted(summary, set_name.value, len(model), output, png, probabilities)


def _print_predicted(
    summary: Summary, set_name: str, n_models: int, output: Path, png: Path | None, probabilities: bool
) -> None:
    """What ``worker predict`` did: speed, score (labelled sets), the files written."""
    from worker.predict_terminal import render_score

    tta_text = ", ".join("on" if t else "off" for t in summary.tta)
    rate = summary.n_images / summary.seconds if summary.seconds > 0 else float("inf")
    typer.echo(
        f"predicted {summary.n_images} images of '{set_name}' with {n_models} model(s), "
        f"flip TTA {tta_text}: {summary.seconds:.1f}s ({rate:.0f} images/s)"
    )
    if summary.score is not None:
        for line in render_score(summary.score, summary.scored_images, summary.n_images):
            typer.echo(line)
    typer.echo(
        f"wrote {output}: masks ({summary.n_images}, 64, 128) uint8"
        + (", probabilities float16" if probabilities else "")
    )
    if summary.pngs:
        where = summary.pngs[0] if len(summary.pngs) == 1 else f"{png}/ ({len(summary.pngs)} files)"
        typer.echo(f"PNGs: {where}")


# `worker run`'s longer options.
WaitForDbOpt = Annotated[
    float,
    typer.Option(
        "--wait-for-db",
        envvar="TUNER_WAIT_FOR_DB",
        show_envvar=True,
        metavar="SECONDS",
        callback=_finite_seconds,
        help="At start-up, wait up to this long for the database (and the study) to appear, "
        "printing a line every few seconds. 0: fail at once.",
    ),
]
CompileCacheOpt = Annotated[
    str | None,
    typer.Option(
        "--compile-cache",
        envvar=ENV_COMPILE_CACHE,
        show_envvar=True,
        metavar="DIR",
        help=f"Keep compiled XLA programs here (Keras on JAX), so a restarted worker does not "
        f"compile again; 'off' disables it. Default: {DEFAULT_COMPILE_CACHE}.",
    ),
]


@app.command()
def run(
    study: Annotated[str, typer.Option("--study", envvar="TUNER_STUDY", show_envvar=True, help="Study name.")],
    data: DataOpt,
    storage: StorageOpt = None,
    gpu: GpuOpt = None,
    max_trials: Annotated[
        int | None,
        typer.Option(min=1, help="Stop after this many trials of this process (the study budget still applies)."),
    ] = None,
    max_failures: Annotated[int, typer.Option(min=1, help="Stop after this many failed trials in a row.")] = 3,
    artifact_dir: ArtifactDirOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No per-epoch progress.")] = False,
    wait_for_db: WaitForDbOpt = 0.0,
    compile_cache: CompileCacheOpt = None,
) -> None:
    """Pull trials from a shared study until its budget is reached, training each one.

    SIGTERM or Ctrl-C fails the current trial cleanly and queues it again for another worker.
    """
    from worker.runner import run_worker

    if compile_cache is not None:  # worker.training.backend reads it where the backend starts
        os.environ[ENV_COMPILE_CACHE] = compile_cache
    code = run_worker(
        study_name=study,
        data_path=data,
        storage_url=storage,
        gpu=gpu,
        max_trials=max_trials,
        max_failures=max_failures,
        artifact_dir=artifact_dir,
        verbose=not quiet,
        wait_for_db_s=wait_for_db,
    )
    # Every trial is settled; a second SIGTERM (compose, systemd) during interpreter and
    # TensorFlow teardown must not turn a clean exit into 143.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise typer.Exit(code)
