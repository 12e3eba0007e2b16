"""Device planning with fake GPU lists (this machine has none), and the thin TF part on CPU."""

from __future__ import annotations

import pytest

from worker.training.device import (
    DeviceError,
    DeviceInfo,
    configure,
    describe,
    plan,
    with_precision,
)

TWO_GPUS = ["NVIDIA A100 (0)", "NVIDIA A100 (1)"]


def test_no_gpu_and_no_request_trains_on_cpu_in_float32() -> None:
    decided = plan([], None, "auto")
    assert decided.device.kind == "CPU"
    assert decided.device.index is None
    assert decided.device.mixed_precision is False
    assert decided.device.policy == "float32"
    assert decided.visible is None
    assert decided.warnings == ()


def test_gpu_index_pins_that_gpu_with_mixed_precision_on_auto() -> None:
    decided = plan(TWO_GPUS, 1, "auto")
    assert decided.device.kind == "GPU"
    assert decided.device.index == 1
    assert decided.device.name == TWO_GPUS[1]
    assert decided.visible == (1,)
    assert decided.device.mixed_precision is True
    assert decided.device.policy == "mixed_float16"


def test_gpus_without_request_leave_visibility_alone() -> None:
    decided = plan(TWO_GPUS, None, "auto")
    assert decided.visible is None
    assert decided.device.kind == "GPU"
    assert decided.device.index == 0


def test_gpu_index_out_of_range_names_the_gpu_count() -> None:
    with pytest.raises(DeviceError, match=r"--gpu 3 .*2 GPU") as info:
        plan(TWO_GPUS, 3, "auto")
    assert "\n" not in str(info.value)


def test_gpu_requested_on_a_machine_without_gpu_is_an_error() -> None:
    with pytest.raises(DeviceError, match="--gpu 0 given but this machine has no GPU"):
        plan([], 0, "auto")


@pytest.mark.parametrize("bad", [-1, True, "1"])
def test_gpu_index_must_be_a_non_negative_int(bad: object) -> None:
    with pytest.raises(DeviceError, match="--gpu must be"):
        plan(TWO_GPUS, bad, "auto")  # type: ignore[arg-type]


def test_mixed_precision_off_on_gpu_is_float32() -> None:
    decided = plan(TWO_GPUS, 0, "off")
    assert decided.device.mixed_precision is False
    assert decided.device.policy == "float32"


def test_mixed_precision_on_without_gpu_warns_and_stays_float32() -> None:
    decided = plan([], None, "on")
    assert decided.device.mixed_precision is False
    assert len(decided.warnings) == 1
    assert "float32" in decided.warnings[0]


def test_unknown_mixed_precision_mode_is_an_error() -> None:
    with pytest.raises(DeviceError, match="mixed precision must be one of"):
        plan([], None, "fp16")


def test_configure_on_this_cpu_machine_returns_cpu() -> None:
    info = configure(None)
    assert isinstance(info, DeviceInfo)
    assert info.kind == "CPU"
    assert info.mixed_precision is False


def test_configure_with_gpu_on_this_cpu_machine_is_an_error() -> None:
    with pytest.raises(DeviceError, match="no GPU"):
        configure(0)


def test_describe_has_versions_host_and_device() -> None:
    from importlib import metadata

    info = describe(DeviceInfo(kind="GPU", name="fake", index=1, mixed_precision=True))
    assert info["versions"]["tensorflow"] == metadata.version("tensorflow")
    assert info["versions"]["keras"] == metadata.version("keras")
    assert info["versions"]["optuna"] == metadata.version("optuna")
    assert info["hostname"]
    assert info["python"].count(".") == 2
    assert (info["device"], info["device_name"], info["device_index"]) == ("GPU", "fake", 1)


def test_describe_without_device_detects_this_cpu() -> None:
    info = describe()
    assert info["device"] == "CPU"
    assert info["mixed_precision"] is False


@pytest.mark.parametrize(
    "kind, mode, expected",
    [
        ("GPU", "auto", True),
        ("GPU", "on", True),
        ("GPU", "off", False),
        ("CPU", "auto", False),
        ("CPU", "on", False),
        ("CPU", "off", False),
    ],
)
def test_with_precision_applies_a_configs_mode_to_the_configured_device(kind, mode, expected):
    device = DeviceInfo(kind=kind, name="x", index=0 if kind == "GPU" else None, mixed_precision=kind == "GPU")
    changed = with_precision(device, mode)
    assert changed.mixed_precision is expected
    assert (changed.kind, changed.name, changed.index) == (device.kind, device.name, device.index)
    # The same decision plan() makes for that mode.
    gpus = ["gpu0"] if kind == "GPU" else []
    assert plan(gpus, None, mode).device.mixed_precision is expected


def test_with_precision_rejects_unknown_mode():
    with pytest.raises(DeviceError, match="mixed precision must be one of"):
        with_precision(DeviceInfo(kind="CPU", name="x", index=None, mixed_precision=False), "half")
