"""Which device a worker trains on, and in which precision.

One worker process trains on one GPU (``--gpu N``) or on the CPU. The decision is split in two:
:func:`plan` is pure (it takes the list of GPUs as data), so every GPU branch is unit-tested on
CPU-only machines with fake device lists; :func:`configure` is the thin part that asks TensorFlow
for the GPUs and applies the plan. TensorFlow is imported lazily so the decision logic and the
CLI's ``--help`` stay fast.

Mixed precision: ``"auto"`` means ``mixed_float16`` on a GPU and float32 on the CPU. ``"on"`` on
the CPU is *not* an error: it warns and stays float32, because float16 arithmetic on CPUs is
emulated and slower, and a search space or exported config written for GPU workers should still
run on a CPU worker instead of failing every trial there.
"""

from __future__ import annotations

import dataclasses
from importlib import metadata
import platform
import socket
import sys
from typing import Any, Literal
import warnings

from contract.errors import TunerError

MIXED_PRECISION_MODES = ("auto", "on", "off")


class DeviceError(TunerError, RuntimeError):
    """The requested device cannot be used; the message is one line for the user."""


@dataclasses.dataclass(frozen=True)
class DeviceInfo:
    """The device a training run uses; recorded with each trial for provenance."""

    kind: Literal["GPU", "CPU"]
    name: str
    index: int | None
    mixed_precision: bool
    half: Literal["float16", "bfloat16"] = "float16"  # the 16-bit type of mixed precision

    @property
    def policy(self) -> str:
        """The Keras dtype policy name this device trains with."""
        return f"mixed_{self.half}" if self.mixed_precision else "float32"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What :func:`configure` will do, decided without touching TensorFlow.

    ``visible`` lists the indices (into the machine's GPU list) to make visible; ``None`` means
    leave visibility alone (no ``--gpu`` given: TensorFlow's default, all GPUs visible).
    ``warnings`` are messages to emit; they are kept as data so tests can check them.
    """

    device: DeviceInfo
    visible: tuple[int, ...] | None
    warnings: tuple[str, ...] = ()


def plan(gpus: list[str], gpu: int | None, mixed_precision: str = "auto") -> Plan:
    """Decide device and precision from the machine's GPU names.

    ``gpus`` are the names of the physical GPUs in TensorFlow's order; ``gpu`` is the ``--gpu``
    index or ``None``. A ``--gpu`` that cannot be honoured is an error rather than a silent CPU
    fallback: a worker meant for GPU 1 that quietly trains on CPU would be ~50x slower and would
    hold its trials for hours.
    """
    if mixed_precision not in MIXED_PRECISION_MODES:
        raise DeviceError(f"mixed precision must be one of {', '.join(MIXED_PRECISION_MODES)}, got {mixed_precision!r}")
    if gpu is not None:
        if isinstance(gpu, bool) or not isinstance(gpu, int) or gpu < 0:
            raise DeviceError(f"--gpu must be a GPU index >= 0, got {gpu!r}")
        if not gpus:
            raise DeviceError(f"--gpu {gpu} given but this machine has no GPU")
        if gpu >= len(gpus):
            raise DeviceError(
                f"--gpu {gpu} is out of range: this machine has {len(gpus)} GPU(s), indices 0..{len(gpus) - 1}"
            )

    notes: list[str] = []
    if gpus:
        index = 0 if gpu is None else gpu
        mixed = mixed_precision in ("auto", "on")
        device = DeviceInfo(kind="GPU", name=gpus[index], index=index, mixed_precision=mixed)
        visible = None if gpu is None else (gpu,)
    else:
        if mixed_precision == "on":
            notes.append("mixed precision 'on' ignored: no GPU, float16 on CPU is slower; using float32")
        device = DeviceInfo(kind="CPU", name=_cpu_name(), index=None, mixed_precision=False)
        visible = None
    return Plan(device=device, visible=visible, warnings=tuple(notes))


def with_precision(device: DeviceInfo, mixed_precision: str) -> DeviceInfo:
    """The same device under another config's precision mode (same rules as :func:`plan`).

    A worker configures its device once but trains configs that may each ask for their own
    precision: a GPU honours "off", a CPU stays float32 whatever is asked.
    """
    if mixed_precision not in MIXED_PRECISION_MODES:
        raise DeviceError(f"mixed precision must be one of {', '.join(MIXED_PRECISION_MODES)}, got {mixed_precision!r}")
    mixed = device.kind == "GPU" and mixed_precision in ("auto", "on")
    return dataclasses.replace(device, mixed_precision=mixed)


def configure(
    gpu: int | None,
    *,
    mixed_precision: str = "auto",
    memory_growth: bool = True,
) -> DeviceInfo:
    """Pin the GPU, enable memory growth and return the device to train on.

    Call it before any TensorFlow op runs: TensorFlow fixes visible devices and memory settings
    when its runtime initialises and refuses changes afterwards. It does not set the Keras dtype
    policy itself (that is global state); :func:`worker.training.train.train` sets it from
    :attr:`DeviceInfo.policy` around model building.
    """
    from worker.training.backend import name as backend_name

    if backend_name() == "jax":
        return _configure_jax(gpu, mixed_precision)
    from worker.training.quiet import native_stderr_captured

    with native_stderr_captured():
        import tensorflow as tf

        physical = tf.config.list_physical_devices("GPU")
    decided = plan([_gpu_name(tf, d) for d in physical], gpu, mixed_precision)
    for message in decided.warnings:
        warnings.warn(message, RuntimeWarning, stacklevel=2)
    try:
        if decided.visible is not None:
            tf.config.set_visible_devices([physical[i] for i in decided.visible], "GPU")
        if memory_growth:
            for device in tf.config.get_visible_devices("GPU"):
                tf.config.experimental.set_memory_growth(device, True)
    except RuntimeError as exc:
        raise DeviceError(
            "cannot change GPU settings after TensorFlow has initialised; "
            f"configure the device before building models ({str(exc).splitlines()[0]})"
        ) from None
    return decided.device


def _configure_jax(gpu: int | None, mixed_precision: str) -> DeviceInfo:
    """The JAX backend's :func:`configure`: pin ``--gpu`` as JAX's default device.

    JAX preallocates most of the GPU's memory for its one process, which suits one worker per
    GPU; ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` is JAX's own switch for sharing a GPU.
    """
    import jax

    physical = [d for d in jax.devices() if d.platform == "gpu"]
    decided = plan([d.device_kind for d in physical], gpu, mixed_precision)
    for message in decided.warnings:
        warnings.warn(message, RuntimeWarning, stacklevel=3)
    if decided.visible is not None:
        jax.config.update("jax_default_device", physical[decided.visible[0]])
    return decided.device


def detect(mixed_precision: str) -> DeviceInfo:
    """The device the backend will use as configured now, without changing any setting: a run
    given no device trains on this one."""
    from worker.training.backend import gpu_names

    return plan(gpu_names(), None, mixed_precision).device


def describe(device: DeviceInfo | None = None) -> dict[str, Any]:
    """Provenance for a trial: device, library versions, host and Python.

    Pass the :class:`DeviceInfo` that :func:`configure` returned; without it the device is
    detected (which imports TensorFlow) and assumed to use the ``"auto"`` precision. Versions
    come from package metadata; a missing package reads as ``None``.
    """
    from worker.training.backend import name as backend_name

    backend = backend_name()
    if device is None:
        if backend == "tensorflow":
            import tensorflow as tf

            gpus = [_gpu_name(tf, d) for d in tf.config.get_visible_devices("GPU")]
        else:
            from worker.training.backend import gpu_names

            gpus = gpu_names()
        device = plan(gpus, None, "auto").device
    packages = ("tensorflow", "keras", "optuna", "numpy") + (("jax", "jaxlib") if backend == "jax" else ())
    info: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "executable": sys.executable,
        "backend": backend,
        "versions": {name: _version(name) for name in packages},
    }
    info.update(
        device=device.kind, device_name=device.name, device_index=device.index, mixed_precision=device.mixed_precision
    )
    return info


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _gpu_name(tf: Any, device: Any) -> str:
    """The marketing name ("NVIDIA A100 ...") when TensorFlow knows it, else its device path."""
    try:
        details = tf.config.experimental.get_device_details(device)
    except (RuntimeError, ValueError):
        details = {}
    return str(details.get("device_name") or device.name)


def _cpu_name() -> str:
    """The CPU model from /proc/cpuinfo on Linux; ``platform`` elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"
