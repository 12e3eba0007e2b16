"""What ``worker train`` does around the training: its output options checked before the data is
read, the config and data loaded and checked, the result printed and written, and the
``--all-data`` run (the final model). Keras is imported only inside the functions that train.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from contract.errors import first_line
from contract.options import fail as _fail

if TYPE_CHECKING:
    from contract.config import TrainConfig
    from contract.data import MarsData
    from worker.training.result import TrainResult


def check_train_outputs(save: Path | None, result_json: Path | None, all_data: bool) -> None:
    """``worker train``'s output options, checked before the data is read and anything trains."""
    from contract.atomic import writable_problem

    if save is not None and save.suffix != ".keras":
        raise _fail(f"{save}: --save must end in .keras")
    if all_data and save is None:
        raise _fail("--all-data trains the final model: name where to save it with --save FILE.keras")
    for option, path in (("--save", save), ("--result", result_json)):
        problem = writable_problem(path) if path is not None else None
        if problem:
            raise _fail(f"{option} {path}: {problem}")


def trainable(config: Path, data: Path) -> tuple[TrainConfig, MarsData]:
    """The config and the data it trains on (its ``max_images`` subset), refused when nothing
    in it can be learnt."""
    from contract.config import TrainConfig
    from contract.data import check_trainable, load_npz
    from contract.data_format import DataError

    cfg = TrainConfig.load(config)
    loaded = load_npz(data, max_images=cfg.max_images, seed=cfg.seed, load_test=False)
    try:
        check_trainable(loaded.masks, validation_fraction=cfg.validation_fraction)
    except DataError as exc:
        raise _fail(f"--data {data}: {exc}") from None
    return cfg, loaded


def report_result(result: TrainResult, result_json: Path | None) -> None:
    """The outcome is out (terminal, --result) before saving the model can fail."""
    import json

    from contract.atomic import replacing

    per_class = ", ".join(f"{c}:{v:.4f}" if v == v else f"{c}:n/a" for c, v in result.per_class_iou.items())
    typer.echo(f"mean IoU (classes 1-4): {result.best_miou:.4f}  per class: {per_class}")
    typer.echo(f"epochs: {result.epochs_run} (best {result.best_epoch + 1})  wall time: {result.wall_time_s:.1f}s")
    if result_json is not None:
        try:
            with replacing(result_json) as tmp:
                tmp.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        except OSError as exc:
            raise _fail(f"--result {result_json}: cannot write: {exc.strerror}") from None
        typer.echo(f"result written to {result_json}")


def run_all_data(cfg, loaded, save, result_json, device, quiet) -> None:  # type: ignore[no-untyped-def]
    """``worker train --all-data``: the final model, with no validation score to print."""
    import dataclasses
    import json

    from contract.atomic import replacing
    from worker.training.all_data import train_all_data

    try:
        result = train_all_data(cfg, loaded, save_path=save, verbose=not quiet, device=device)
    except OSError as exc:
        raise _fail(f"--save {save}: cannot save the model: {exc.strerror or first_line(exc, limit=200)}") from None
    typer.echo(
        f"trained on all {result.n_images} images (training + validation) for {result.epochs} epochs "
        f"in {result.wall_time_s:.1f}s; final training loss {result.losses[-1]:.4f}"
    )
    typer.echo(
        "no validation score: no image was held out. The trial's validation mIoU (in the "
        "exported config's header) is the estimate for this configuration."
    )
    if not result.replayed:
        typer.echo(
            f"note: the config has no lr_schedule: {result.epochs} epochs (its 'epochs') at learning "
            f"rate {cfg.learning_rate:g}; `tuner export` writes the trial's"
        )
    if result_json is not None:
        try:
            with replacing(result_json) as tmp:
                tmp.write_text(json.dumps(dataclasses.asdict(result), indent=2) + "\n")
        except OSError as exc:
            raise _fail(f"--result {result_json}: cannot write: {exc.strerror}") from None
        typer.echo(f"result written to {result_json}")
    typer.echo(f"model saved to {save}")
