"""Workers on a Slurm cluster: ``deploy/slurm/worker.sbatch`` as an array job, for real.

Each test starts the README's commands ("On a Slurm cluster") on a one-node cluster
(tests/slurmcluster.py), in a directory holding the script at the path the README names, with
what the README's ``export`` lines set (database, study, data, artifact directory) pointing at the
test's PostgreSQL database and synthetic data. Models are tiny (base filters 4, 48 images); the
workers are real processes that Slurm starts, signals, kills and restarts.
"""

from __future__ import annotations

from collections.abc import Callable
import datetime
import os
from pathlib import Path
import re
import shutil
import subprocess

from helpers import BIN, run_cli, study_trials, tiny_space, wait_for
from optuna.trial import FrozenTrial, TrialState
import pytest
from slurmcluster import Job, SlurmCluster, slurm, slurm_cluster  # noqa: F401 - fixtures

from contract import trial_attrs

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = "deploy/slurm/worker.sbatch"
STUDY = "mars"
# The README's lines, run as they are written (STOP_TASK names the task that runs the trial).
SUBMIT = "jobid=$(sbatch --parsable --array=0-2 deploy/slurm/worker.sbatch)"
WATCH = ('squeue -j "$jobid"', "tuner status mars")
STOP_TASK = 'scancel "${jobid}_2"'
STOP_ALL = 'scancel "$jobid"'

# Epochs of a trial that a test interrupts: long enough that the signal lands mid-trial, short
# enough that the retry does not cost much (~0.4 s an epoch on the 2-core CI machine).
EPOCHS_SHORT_CUT = 20  # scancel / requeue: the signal follows the first epoch within a second
EPOCHS_TIME_LIMIT = 120  # slurmctld checks time limits every 30 s: the warning may take that long
pytestmark = pytest.mark.npz(48, seed=3)  # the tiny space's data


class Site:
    """A user's login node: the script at its documented path, the README's environment."""

    def __init__(self, cluster: SlurmCluster, url: str, npz: Path, where: Path):
        self.cluster, self.url, self.npz, self.where = cluster, url, npz, where
        (where / "deploy" / "slurm").mkdir(parents=True)
        shutil.copy2(ROOT / SCRIPT, where / SCRIPT)
        self.env = {
            **os.environ,
            **cluster.env,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # the venv, as if activated
            "TUNER_STORAGE": url,
            "TUNER_STUDY": STUDY,
            "TUNER_DATA": str(npz),
            "TUNER_ARTIFACT_DIR": str(where / "artifacts"),
            "TUNER_COMPILE_CACHE": str(where / "cache"),
        }

    def create(self, *, trials: int, epochs: int) -> None:
        space = tiny_space(
            self.where / "space.yaml", epochs=epochs, early_stopping_patience=1000, reduce_lr_patience=1000
        )
        result = run_cli(
            "tuner",
            "create",
            STUDY,
            "--data",
            str(self.npz),
            "--space",
            str(space),
            "--trials",
            str(trials),
            "--pruner",
            "none",
            env={"TUNER_STORAGE": self.url},
        )
        assert result.returncode == 0, result.stderr

    def sh(self, line: str, **variables: str) -> subprocess.CompletedProcess[str]:
        """Run one documented command line in bash, as a user would type it."""
        result = subprocess.run(
            ["bash", "-c", line],
            cwd=self.where,
            capture_output=True,
            text=True,
            timeout=120,
            env={**self.env, **variables},
        )
        assert result.returncode == 0, f"$ {line}\n{result.stdout}{result.stderr}"
        return result

    def submit(self, array: str = "0-2") -> str:
        """The README's sbatch line (with another ``--array`` if asked); the array's job id."""
        line = SUBMIT.replace("--array=0-2", f"--array={array}")
        return self.sh(f'{line} && echo "$jobid"').stdout.strip().split(";")[0]

    def trials(self) -> list[FrozenTrial]:
        return study_trials(self.url, STUDY)

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}"
            for p in sorted(self.where.glob("mars-tuner-*.out"))
        )

    def log(self, task: str) -> str:
        return (self.where / f"mars-tuner-{task}.out").read_text(errors="replace")

    def wait_for(self, predicate: Callable[[], object], timeout: float, what: str) -> None:
        wait_for(predicate, timeout, what, poll=0.5, detail=self.logs)

    def task_mid_trial(self) -> tuple[str, FrozenTrial]:
        """Wait until trial 0 runs and has reported an epoch; the Slurm task running it, and it."""

        def running() -> list[FrozenTrial]:
            return [t for t in self.trials() if t.state == TrialState.RUNNING and t.intermediate_values]

        self.wait_for(running, 300, "a trial to report its first epoch")
        (trial,) = running()
        return trial.user_attrs[trial_attrs.WORKER]["slurm"], trial

    def done(self, job_id: str) -> dict[str, Job]:
        try:
            jobs = self.cluster.wait_until_done(job_id, 600)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None
        return {job.task: job for job in jobs}


@pytest.fixture
def site(pg_url, slurm, npz, tmp_path) -> Site:  # noqa: F811 - pytest fixtures by name
    return Site(slurm, pg_url, npz, tmp_path)


def _requeued_once(site: Site, victim: str, *, rescuer: str) -> FrozenTrial:
    """The victim's trial failed by SIGTERM, was queued again with its parameters and finished
    once, by ``rescuer``; nothing else was created. Returns the interrupted trial."""
    trials = site.trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE], site.logs()
    cut, retry = trials
    assert cut.user_attrs[trial_attrs.INTERRUPTED] == "SIGTERM"
    assert cut.user_attrs[trial_attrs.WORKER]["slurm"] == victim
    assert retry.user_attrs[trial_attrs.RETRY_OF] == cut.number
    assert retry.params == cut.params  # the same configuration, run again
    assert retry.user_attrs[trial_attrs.WORKER]["slurm"] == rescuer
    assert retry.user_attrs[trial_attrs.EPOCHS_RUN] == len(retry.intermediate_values)
    assert "interrupted by SIGTERM" in site.log(victim)
    return cut


def test_readme_slurm_section_has_the_commands_these_tests_run():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## On a Slurm cluster", 1)[1].split("\n## ", 1)[0]
    blocks = "\n".join(re.findall(r"```bash\n(.*?)```", section, flags=re.S))
    lines = {line.split(" #", 1)[0].strip() for line in blocks.splitlines()}
    for command in (SUBMIT, *WATCH, STOP_TASK, STOP_ALL):
        assert command in lines, f"README's Slurm section lacks: {command}"
    assert f"{SUBMIT.replace('--array=0-2', '--array=0-3 --gres=gpu:1')}" in lines  # the GPU form
    script = (ROOT / SCRIPT).read_text()
    for directive in ("--signal=B:TERM@120", "--requeue", "--open-mode=append"):
        assert f"#SBATCH {directive}\n" in script
    assert "#SBATCH --gres" not in script  # GPUs only when the sbatch line asks for them
    assert re.search(r"^exec worker run ", script, flags=re.M), "the worker must be the batch shell's process"


def test_trials_record_the_slurm_task_that_runs_them():
    array_task = {"SLURM_JOB_ID": "12", "SLURM_ARRAY_JOB_ID": "11", "SLURM_ARRAY_TASK_ID": "1"}
    assert trial_attrs.slurm_task(array_task) == "11_1"
    assert trial_attrs.slurm_task({"SLURM_JOB_ID": "12"}) == "12"
    assert trial_attrs.slurm_task({}) is None


@pytest.mark.slow  # a Slurm cluster; real workers train
def test_an_array_of_three_workers_finishes_the_budget_exactly(site):
    budget = 5
    site.create(trials=budget, epochs=2)
    job_id = site.submit()
    site.wait_for(lambda: any(t.state == TrialState.RUNNING for t in site.trials()), 300, "a running trial")
    assert f"{job_id}_" in site.sh(WATCH[0], jobid=job_id).stdout
    assert STUDY in site.sh(WATCH[1]).stdout

    jobs = site.done(job_id)
    assert sorted(jobs) == [f"{job_id}_{i}" for i in range(3)]
    assert {task: (job.state, job.fields["ExitCode"]) for task, job in jobs.items()} == {
        task: ("COMPLETED", "0:0") for task in jobs
    }, site.logs()
    trials = site.trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * budget, site.logs()
    ran = {t.user_attrs[trial_attrs.WORKER]["slurm"] for t in trials}
    assert ran <= set(jobs) and len(ran) >= 2, f"trials were not shared between tasks: {ran}"
    for task in jobs:
        assert "study budget reached: 5/5 trials finished" in site.log(task)
    best = max(trials, key=lambda t: t.value)
    assert trial_attrs.MODEL_ARTIFACT in best.user_attrs  # uploaded to the shared artifact directory
    assert any((site.where / "artifacts").rglob("*"))


@pytest.mark.slow  # a Slurm cluster; real workers train
def test_scancel_of_a_task_mid_trial_requeues_its_trial_for_another_task(site):
    site.create(trials=1, epochs=EPOCHS_SHORT_CUT)
    job_id = site.submit("0-1")
    victim, _ = site.task_mid_trial()
    site.sh(STOP_TASK.replace("_2", "_" + victim.rsplit("_", 1)[1]), jobid=job_id)

    jobs = site.done(job_id)
    (rescuer,) = set(jobs) - {victim}
    assert (jobs[victim].state, jobs[rescuer].state) == ("CANCELLED", "COMPLETED"), site.logs()
    _requeued_once(site, victim, rescuer=rescuer)


@pytest.mark.slow  # a Slurm cluster; real workers train
def test_a_task_at_its_time_limit_requeues_its_trial_for_another_task(site):
    site.create(trials=1, epochs=EPOCHS_TIME_LIMIT)
    job_id = site.submit("0-1")
    victim, _ = site.task_mid_trial()
    # The limit, cut now to at most 2 minutes from here: 120 s before it (--signal=B:TERM@120) has
    # passed, so the next time-limit check (every 30 s) sends the warning; Slurm's own kill at
    # the limit itself is over a minute away.
    elapsed = site.cluster.jobs(victim)[0].elapsed_s
    site.cluster.run("scontrol", "update", f"JobId={victim}", f"TimeLimit={elapsed // 60 + 2}")
    cut_at = datetime.datetime.now()

    jobs = site.done(job_id)
    (rescuer,) = set(jobs) - {victim}
    # COMPLETED, not TIMEOUT: the worker failed its trial and left before the limit.
    assert (jobs[victim].state, jobs[rescuer].state) == ("COMPLETED", "COMPLETED"), site.logs()
    assert jobs[victim].fields["ExitCode"] == "0:0"
    cut = _requeued_once(site, victim, rescuer=rescuer)
    # At the next 30-s check (plus the few seconds failing the trial takes), not at the limit.
    assert (cut.datetime_complete - cut_at).total_seconds() < 45


@pytest.mark.slow  # a Slurm cluster; real workers train
def test_a_requeued_task_rejoins_and_runs_its_trial_again(site):
    site.create(trials=1, epochs=EPOCHS_SHORT_CUT)
    job_id = site.submit("0-0")
    task, _ = site.task_mid_trial()
    site.cluster.run("scontrol", "requeue", task)  # what preemption with PreemptMode=REQUEUE does

    jobs = site.done(job_id)
    assert (jobs[task].state, jobs[task].restarts) == ("COMPLETED", 1), site.logs()
    cut = _requeued_once(site, task, rescuer=task)
    retry = site.trials()[1]
    assert retry.user_attrs[trial_attrs.WORKER]["pid"] != cut.user_attrs[trial_attrs.WORKER]["pid"]
    log = site.log(task)
    assert "(run 1)" in log and "(run 2)" in log  # both runs, one log (--open-mode=append)
