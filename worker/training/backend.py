"""What differs between Keras' TensorFlow and JAX backends: GPUs, determinism, compile cache.

The worker runs Keras 3 on TensorFlow by default and on JAX with ``KERAS_BACKEND=jax`` (the GPU
machines at hand have JAX but no TensorFlow). Everything backend-specific outside the data path
is here, so the training code reads the same on both.
"""

from __future__ import annotations

from collections.abc import Callable
import os
from pathlib import Path
import sys

ENV_COMPILE_CACHE = "TUNER_COMPILE_CACHE"
DEFAULT_COMPILE_CACHE = Path("~/.cache/mars-tuner/jax")
_cache_dir: str | None = None
_cache_done = False


def name() -> str:
    """``"tensorflow"`` or ``"jax"``: the backend Keras loaded (``KERAS_BACKEND``).

    The first ``import keras`` loads the backend, whose C++ start-up lines must stay off the
    terminal like every other TensorFlow import here.
    """
    if "keras" not in sys.modules:
        from worker.training.quiet import native_stderr_captured

        with native_stderr_captured():
            import keras
    import keras

    return keras.backend.backend()


def is_tensorflow() -> bool:
    return name() == "tensorflow"


def gpu_names() -> list[str]:
    """The visible GPUs' names, in the backend's order."""
    if is_tensorflow():
        import tensorflow as tf

        return [d.name for d in tf.config.get_visible_devices("GPU")]
    import jax

    return [d.device_kind for d in jax.devices() if d.platform == "gpu"]


def set_determinism(enabled: bool) -> None:
    """Deterministic ops on or off for the runs that follow (TensorFlow's global switch).

    Keras 3 silently compiles without XLA while TensorFlow's op determinism is on, so a config
    chooses: bit-exact repeatability (the default) or XLA. TensorFlow's switch is global and only
    "enable" is public; a worker that trains an XLA trial after a deterministic one needs the
    internal "disable". JAX on CPU is deterministic as it is; nothing to switch.
    """
    if not is_tensorflow():
        return
    import tensorflow as tf
    from tensorflow.python.framework import config as tf_config

    if enabled:
        tf.config.experimental.enable_op_determinism()
    else:
        tf_config.disable_op_determinism()


def compile_cache_dir() -> Path | None:
    """The persistent compilation cache directory: ``TUNER_COMPILE_CACHE``, else the default;
    ``TUNER_COMPILE_CACHE=off`` (or empty) turns the cache off."""
    value = os.environ.get(ENV_COMPILE_CACHE)
    if value is None:
        return DEFAULT_COMPILE_CACHE.expanduser()
    if value.strip().lower() in ("", "off", "none", "0"):
        return None
    return Path(value).expanduser()


def compile_cache_problem(directory: Path) -> str | None:
    """Why ``directory`` cannot hold the compilation cache (it is made if missing); ``None`` if it can."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # a file, or a link to nowhere (a loop)
        return "exists and is not a directory"
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    if not os.access(directory, os.W_OK | os.X_OK):
        return "not writable"
    return None


def enable_compile_cache(warn: Callable[[str], None] | None = None) -> str | None:
    """Turn on the backend's persistent compilation cache once per process; returns its dir.

    JAX writes each compiled XLA program there, so a restarted worker (or the next trial of an
    architecture seen before) loads it instead of compiling again. TensorFlow has no such cache
    for ``tf.function`` graphs: returns ``None``. The worker calls this at start-up, so a bad
    ``TUNER_COMPILE_CACHE`` is one ``warn`` line there (and the worker runs without the cache),
    never a failed trial.
    """
    global _cache_dir, _cache_done
    if _cache_done:
        return _cache_dir
    _cache_done = True
    directory = compile_cache_dir()
    if directory is None or is_tensorflow():
        return None
    problem = compile_cache_problem(directory)
    if problem is not None:
        (warn or _warn_stderr)(
            f"warning: compile cache {directory} ({ENV_COMPILE_CACHE}) {problem}; running without it"
        )
        return None
    import jax

    jax.config.update("jax_compilation_cache_dir", str(directory))
    # Keep what took a while to compile (train/evaluate/predict steps), not every small op.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    _cache_dir = str(directory)
    return _cache_dir


def _warn_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def reseed(seed: int) -> None:
    """Seed Python, numpy, Keras and TensorFlow (``keras.utils.set_random_seed``), except that
    TensorFlow's seed is left alone when it already is ``seed``.

    Setting TensorFlow's global seed clears its runtime caches, so every traced function of a
    reused model would be instantiated again on its next call: seconds per trial, the very cost
    a worker keeps its compiled models to avoid.
    """
    import random

    import keras
    import numpy as np

    if is_tensorflow():
        from tensorflow.python.eager import context

        if context.global_seed() == seed:
            random.seed(seed)
            np.random.seed(seed)
            return
    keras.utils.set_random_seed(seed)
