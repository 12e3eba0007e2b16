"""Worker hosts on real links: latency, partitions, blackholes (tests/netns.py).

Each worker is a real ``worker run`` process in a network namespace of its own, reaching the
database host (another namespace, a throw-away cluster) over a veth pair that the test slows down
(tests/netproxy.py) or cuts (iptables DROP, no RST). Trials are tiny (48 synthetic images, base
filters 4); grace periods are a few seconds so that each case takes well under two minutes.
"""

from __future__ import annotations

from pathlib import Path
import time

from helpers import study_trials, wait_for
from netns import HostWorker, Network, net, network  # noqa: F401 - fixtures
from optuna.trial import TrialState
import pytest
from test_faults import _create

from contract import trial_attrs

pytestmark = [pytest.mark.slow, pytest.mark.npz(48, seed=3)]  # real worker processes on namespaced hosts
START_S = 400  # TensorFlow import and tracing: ~20 s idle, minutes on a loaded 2-core machine
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def _study(net: Network, tmp_path: Path, npz: Path, **options: str) -> tuple[str, str]:  # noqa: F811
    """A new database with study ``s`` in it: (database name, the test's own URL)."""
    database = net.new_database()
    local = net.local_url(database)
    _create(local, tmp_path, npz, **options)
    return database, local


def _running_on(local: str, worker: HostWorker) -> list[int]:
    """Numbers of the trials ``worker``'s process is running with an epoch reported."""
    return [
        t.number
        for t in study_trials(local)
        if t.state == TrialState.RUNNING
        and t.intermediate_values
        and t.user_attrs.get(trial_attrs.WORKER, {}).get("pid") == worker.proc.pid
    ]


def _budget_exact(local: str, budget: int) -> list:
    trials = study_trials(local)
    assert len([t for t in trials if t.state in FINISHED]) == budget, [(t.number, t.state) for t in trials]
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    return trials


# -- latency ------------------------------------------------------------------------------------


def test_search_finishes_over_100ms_links_and_counts_its_round_trips(net, tmp_path, npz):  # noqa: F811
    budget, epochs, rtt_ms = 4, 2, 100
    database, local = _study(net, tmp_path, npz, trials=budget, epochs=epochs)
    net.start_proxy(rtt_ms, tmp_path / "proxy.json")
    hosts = net.hosts[:2]
    started = time.monotonic()
    workers = [net.worker(h, database, npz, proxied=True) for h in hosts]
    codes = [w.finish(timeout=900) for w in workers]
    wall = time.monotonic() - started
    counts = net.stop_proxy()
    assert codes == [0, 0], "\n".join(w.text() for w in workers)
    trials = _budget_exact(local, budget)
    assert len(trials) == budget  # nothing failed or retried on the slow links
    round_trips = sum(c.get("round_trips", 0) for c in counts.values())
    per_trial = round_trips / budget
    kinds: dict[str, int] = {}
    for c in counts.values():
        for key, n in c.items():
            word = key.split(":", 1)[-1].split(" ", 1)[0]
            kinds[word] = kinds.get(word, 0) + n
    print(
        f"\n{rtt_ms} ms RTT, {len(hosts)} hosts, {budget} trials of {epochs} epochs in {wall:.0f}s: "
        f"{round_trips} round trips ({per_trial:.1f} per trial = {per_trial * rtt_ms / 1000:.1f}s per trial "
        f"at this RTT); {kinds}"
    )
    assert {f"10.77.{h.index}.2" for h in hosts} <= set(counts)
    # 240 before storage.roundtrips (one statement per attribute, pings only after idling); 161 after.
    assert 0 < per_trial < 200


# -- a blackhole: the database host vanishes for one worker --------------------------------------


def test_blackholed_worker_notices_within_its_timeouts_and_stops_with_one_line(net, tmp_path, npz):  # noqa: F811
    database, local = _study(
        net, tmp_path, npz, trials=1, epochs=8, heartbeat_interval="1", grace_period="4", max_retry="1"
    )
    host = net.hosts[0]
    worker = net.worker(host, database, npz)
    wait_for(lambda: _running_on(local, worker) or worker.proc.poll() is not None, START_S, "the first epoch")
    net.cut(host)  # for good: nothing comes back, not even an RST
    cut_at = time.monotonic()
    code = worker.finish(timeout=300)
    stopped = time.monotonic() - cut_at
    text = worker.text()
    noticed = min(t for t in (worker.first("failed", cut_at), worker.first("unavailable", cut_at)) if t)
    print(f"\nblackhole: noticed after {noticed - cut_at:.1f}s, stopped after {stopped:.1f}s")
    for t, line in worker.lines:
        if t >= cut_at:
            print(f"  +{t - cut_at:5.1f}s {line}")
    assert code == 1, text
    assert "Traceback" not in text
    errors = [line for _, line in worker.lines if line.startswith("error:")]
    assert len(errors) == 1 and "left RUNNING" in errors[0], text
    assert stopped < 90, text


# -- partitions: one host cut off, for longer and for shorter than the grace period ---------------


def test_host_cut_off_past_the_grace_period_loses_its_trial_to_another_and_carries_on(net, tmp_path, npz):  # noqa: F811
    grace, budget = 5, 2
    database, local = _study(
        net, tmp_path, npz, trials=budget, epochs=8, heartbeat_interval="1", grace_period=str(grace), max_retry="1"
    )
    workers = [net.worker(h, database, npz) for h in net.hosts[:2]]
    wait_for(
        lambda: any(_running_on(local, w) for w in workers) or any(w.proc.poll() is not None for w in workers),
        START_S,
        "the first epoch",
    )
    cut_off = next(w for w in workers if _running_on(local, w))
    other = next(w for w in workers if w is not cut_off)
    (lost,) = _running_on(local, cut_off)
    net.cut(cut_off.host)
    cut_at = time.monotonic()
    # The other host fails the silent trial as stale and runs its retry while the link is down.
    wait_for(
        lambda: any(
            t.system_attrs.get("failed_trial") == lost and t.state != TrialState.WAITING for t in study_trials(local)
        ),
        300,
        "the cut-off host's trial to be retried elsewhere",
    )
    assert time.monotonic() - cut_at >= grace - 1  # stale since its last beat, up to 1 s before the cut
    net.heal()
    healed_at = time.monotonic()
    codes = [w.finish(timeout=600) for w in workers]
    text = cut_off.text()
    assert codes == [0, 0], "\n".join(w.text() for w in workers)
    assert "Traceback" not in text + other.text()
    about = [
        line
        for t, line in cut_off.lines
        if t >= healed_at and f"trial {lost} " in line and "warning: heartbeat" not in line
    ]  # a beat may fail as the link comes back
    told = cut_off.first("finished elsewhere", healed_at)
    print(
        f"\npartition: healed {healed_at - cut_at:.1f}s after the cut; the cut-off worker said so "
        f"{(told or healed_at) - healed_at:.1f}s after the link returned"
    )
    assert len(about) == 1 and "finished elsewhere" in about[0] and "dropped" in about[0], text
    assert f"retry of trial {lost}" in other.text()
    assert "done:" in text and "1 dropped" in text  # back in the loop after it, not stopped
    trials = _budget_exact(local, budget)
    assert trials[lost].state == TrialState.FAIL  # never overwritten by the late worker
    assert trial_attrs.MIOU not in trials[lost].user_attrs
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == lost)
    assert retry.state in FINISHED and retry.params == trials[lost].params


def test_host_cut_off_for_less_than_the_grace_period_rides_it_out(net, tmp_path, npz):  # noqa: F811
    import optuna

    import storage

    grace = 20
    database, local = _study(
        net, tmp_path, npz, trials=1, epochs=8, heartbeat_interval="1", grace_period=str(grace), max_retry="1"
    )
    worker = net.worker(net.hosts[0], database, npz)
    wait_for(lambda: _running_on(local, worker) or worker.proc.poll() is not None, START_S, "the first epoch")
    net.cut(net.hosts[0])
    rdb = storage.open_storage(local, heartbeat_interval=1, grace_period=grace, max_retry=1)
    try:
        study = optuna.load_study(study_name="s", storage=rdb)
        until = time.monotonic() + grace / 2
        while time.monotonic() < until:  # what every other worker does before it asks
            storage.fail_stale_trials(study)
            time.sleep(0.5)
    finally:
        net.heal()
        rdb.engine.dispose()
    code = worker.finish(timeout=600)
    assert code == 0, worker.text()
    trials = _budget_exact(local, 1)
    assert [t.state for t in trials] == [TrialState.COMPLETE], worker.text()
    assert trials[0].user_attrs[trial_attrs.EPOCHS_RUN] == 8


# -- the database host unreachable for every worker at once -------------------------------------


def test_database_unreachable_for_every_host_at_once_loses_nothing_within_the_grace_period(net, tmp_path, npz):  # noqa: F811
    grace, budget = 20, 2
    database, local = _study(
        net, tmp_path, npz, trials=budget, epochs=8, heartbeat_interval="1", grace_period=str(grace), max_retry="1"
    )
    workers = [net.worker(h, database, npz) for h in net.hosts[:2]]
    wait_for(
        lambda: all(_running_on(local, w) for w in workers) or any(w.proc.poll() is not None for w in workers),
        START_S,
        "both hosts' first epochs",
    )
    net.cut(*net.hosts[:2])
    time.sleep(grace / 2)
    net.heal()
    codes = [w.finish(timeout=600) for w in workers]
    assert codes == [0, 0], "\n".join(w.text() for w in workers)
    trials = _budget_exact(local, budget)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * budget  # nothing failed or retried
