"""A one-node Slurm cluster that a test module starts and stops (Debian's ``slurm-wlm`` 22.05).

slurmctld and slurmd run in the foreground as children of the test process, on ports of their own
(``TEST_SLURM_PORT`` for slurmctld, default 56817, and the next one for slurmd), with their state,
spool, logs and configuration in a temporary directory. Authentication is the machine's munged;
when none runs, the fixture starts one as user ``munge`` (the package's key) and stops it again.
The node claims 8 CPUs whatever the machine has, so an array of workers runs at once.

The finaliser cancels every job, waits until Slurm has killed their processes, stops the daemons
it started and removes the directory, also when a test failed. Needs root and the packages
(``.ci/run`` installs them); otherwise the tests skip, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
import dataclasses
import os
from pathlib import Path
import shutil
import socket
import subprocess
import tempfile
import time

import pytest

PORT = int(os.environ.get("TEST_SLURM_PORT", "56817"))
NODE = "tuner-node"
PARTITION = "tuner"
#: Final job states: the job's processes are gone (a requeued task goes back to PENDING instead).
DONE = frozenset(
    {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "PREEMPTED", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
)
DAEMONS = ("slurmctld", "slurmd", "munged", "sbatch", "squeue", "scancel", "scontrol", "sinfo")
MUNGE_KEY = Path("/etc/munge/munge.key")
MUNGE_RUN = Path("/run/munge")

# Short waits so that tests stay short: 10 s from SIGTERM to SIGKILL (KillWait), and a requeued
# job may start again 10 s after it stopped (cred_expire; 120 s by default).
CONF = """\
ClusterName=mars-tuner-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=10
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
KillWait=10
MinJobAge=3600
SchedulerParameters=sched_interval=2
NodeName={node} NodeAddr=127.0.0.1 NodeHostname={host} CPUs=8 State=UNKNOWN
PartitionName={partition} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing() -> str | None:
    """Why this machine cannot run the cluster, or None."""
    if os.geteuid() != 0:
        return "needs root (slurmd runs jobs as their user; munged as munge)"
    absent = [name for name in DAEMONS if shutil.which(name) is None]
    if absent:
        return f"not installed: {', '.join(absent)} (apt-get install slurm-wlm munge; .ci/run does)"
    if not MUNGE_KEY.exists():
        return f"no munge key at {MUNGE_KEY}"
    return None


@dataclasses.dataclass
class Job:
    """One task of a job as ``scontrol show job`` reports it."""

    fields: dict[str, str]

    @property
    def task(self) -> str:
        """``ARRAYJOB_TASK`` (what ``scancel`` takes and workers record), or the job id."""
        if self.fields.get("ArrayJobId"):
            return f"{self.fields['ArrayJobId']}_{self.fields['ArrayTaskId']}"
        return self.fields["JobId"]

    @property
    def state(self) -> str:
        return self.fields["JobState"]

    @property
    def restarts(self) -> int:
        return int(self.fields.get("Restarts", "0"))

    @property
    def elapsed_s(self) -> int:
        """RunTime in seconds ([DD-]HH:MM:SS)."""
        days, _, clock = self.fields["RunTime"].rpartition("-")
        h, m, s = (int(part) for part in clock.split(":"))
        return int(days or 0) * 86400 + h * 3600 + m * 60 + s


@dataclasses.dataclass
class SlurmCluster:
    root: Path

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """What a client command needs to reach this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, env={**os.environ, **self.env})
        if check:
            assert result.returncode == 0, f"{' '.join(argv)}: {result.stdout}{result.stderr}"
        return result

    def jobs(self, job_id: str | None = None) -> list[Job]:
        """Every task of ``job_id`` (every job: None); a still pending array's tasks share one record."""
        result = self.run("scontrol", "show", "job", "--oneliner", *([job_id] if job_id else []), check=False)
        if result.returncode != 0 or "No jobs in the system" in result.stdout:
            return []
        return [Job(_fields(line)) for line in result.stdout.splitlines() if line.startswith("JobId=")]

    def wait_until_done(self, job_id: str, timeout: float, why: str = "") -> list[Job]:
        """Wait until no task of ``job_id`` is pending, running or completing; its tasks."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            jobs = self.jobs(job_id)
            if jobs and all(job.state in DONE for job in jobs):
                return jobs
            time.sleep(1)
        raise AssertionError(
            f"job {job_id} not done after {timeout:.0f}s{why}: "
            + "; ".join(f"{j.task} {j.state}" for j in self.jobs(job_id))
        )

    def cancel_all(self, timeout: float = 60) -> None:
        """Cancel every job and wait until Slurm has killed their processes."""
        pending = {job.fields.get("ArrayJobId") or job.fields["JobId"] for job in self.jobs() if job.state not in DONE}
        if pending:
            self.run("scancel", *sorted(pending), check=False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(job.state not in DONE for job in self.jobs()):
            time.sleep(1)

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def _fields(line: str) -> dict[str, str]:
    """``Key=Value Key=Value ...`` (values without spaces, which is all this module reads)."""
    fields = {}
    for word in line.split():
        key, sep, value = word.partition("=")
        if sep:
            fields.setdefault(key, value)
    return fields


def _munge_works() -> bool:
    return subprocess.run(["munge", "-n"], capture_output=True, timeout=30).returncode == 0


def _start_munged(stack: contextlib.ExitStack, root: Path) -> None:
    """Start munged as user munge (the machine's key and socket) and stop it at the end."""
    if not MUNGE_RUN.exists():
        MUNGE_RUN.mkdir(mode=0o755)
        shutil.chown(MUNGE_RUN, "munge", "munge")
        stack.callback(shutil.rmtree, MUNGE_RUN, ignore_errors=True)
    log = open(root / "munged.log", "wb")  # noqa: SIM115 - closed by the stack
    stack.callback(log.close)
    munged = subprocess.Popen(
        ["munged", "--foreground"], user="munge", group="munge", stdout=log, stderr=subprocess.STDOUT
    )
    stack.callback(_stop, munged)
    _wait(_munge_works, 30, "munged to answer", munged)


def _start(stack: contextlib.ExitStack, root: Path, *argv: str) -> subprocess.Popen[bytes]:
    log = open(root / f"{argv[0]}.log", "wb")  # noqa: SIM115 - closed by the stack
    stack.callback(log.close)
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    stack.callback(_stop, proc)
    return proc


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)


def _wait(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.5)
    raise RuntimeError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A running one-node cluster for this module; every job is cancelled after each test."""
    why = missing()
    if why:
        if _in_ci():
            pytest.fail(f"CI must run the Slurm tests: {why}")
        pytest.skip(why)
    with contextlib.ExitStack() as stack:
        root = Path(tempfile.mkdtemp(prefix=f"tuner-slurm-{PORT}-"))
        stack.callback(shutil.rmtree, root, ignore_errors=True)
        (root / "state").mkdir()
        (root / "spool").mkdir()
        host = socket.gethostname().split(".")[0]
        (root / "slurm.conf").write_text(
            CONF.format(host=host, port=PORT, slurmd_port=PORT + 1, root=root, node=NODE, partition=PARTITION)
        )
        if not _munge_works():
            _start_munged(stack, root)
        cluster = SlurmCluster(root)
        conf = str(cluster.conf)
        ctld = _start(stack, root, "slurmctld", "-D", "-c", "-f", conf)
        slurmd = _start(stack, root, "slurmd", "-D", "-N", NODE, "-f", conf)
        # Registered jobs die before the daemons that track them (callbacks run last-in first-out).
        stack.callback(cluster.cancel_all)
        try:
            _wait(
                lambda: cluster.run("sinfo", "--noheader", "--format=%T", check=False).stdout.strip() == "idle",
                60,
                "the node to be idle",
            )
        except RuntimeError as exc:
            raise RuntimeError(
                f"{exc}; slurmctld ({ctld.poll()}): {cluster.log('slurmctld')}\n"
                f"slurmd ({slurmd.poll()}): {cluster.log('slurmd')}"
            ) from None
        yield cluster


@pytest.fixture
def slurm(slurm_cluster: SlurmCluster) -> Iterator[SlurmCluster]:
    """The module's cluster; the test's jobs are cancelled (and their workers gone) afterwards."""
    yield slurm_cluster
    slurm_cluster.cancel_all()
