"""Ending a cell's whole process tree: descendants in other sessions that ignore SIGTERM included, and never a
process the runner did not start (a recorded PID whose creation time differs is left alone)."""

import json
import subprocess
import sys
import time

import psutil

from harness.run import proctree

# A launcher whose worker moves to its own session and ignores SIGTERM (as a stuck torchrun worker may).
LAUNCHER = """
import signal, subprocess, sys, time
worker = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(600)"
child = subprocess.Popen([sys.executable, "-c", worker], start_new_session=True, stdout=subprocess.PIPE, text=True)
child.stdout.readline()
print(child.pid, flush=True)
time.sleep(600)
"""


def test_the_whole_tree_ends_whatever_its_session_and_signals():
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER], start_new_session=True, stdout=subprocess.PIPE,
                                text=True)
    worker = int(launcher.stdout.readline())
    tree = proctree.snapshot(launcher.pid)
    assert set(tree) == {launcher.pid, worker}
    assert psutil.Process(worker).ppid() == launcher.pid and psutil.Process(worker).status() != psutil.STATUS_ZOMBIE
    started = time.monotonic()
    survivors = proctree.terminate(tree, grace_s=1.0, reap=launcher.poll)
    launcher.wait(timeout=10)
    assert survivors == {} and proctree.alive(tree) == {}
    assert time.monotonic() - started >= 1.0  # the worker ignored SIGTERM: SIGKILL after the grace period
    assert not psutil.pid_exists(worker) or psutil.Process(worker).status() == psutil.STATUS_ZOMBIE


def test_a_recorded_pid_now_used_by_another_process_is_never_signalled(tmp_path):
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        record = tmp_path / "procs.json"
        proctree.save(record, {bystander.pid: psutil.Process(bystander.pid).create_time() - 100.0}, "m")
        assert proctree.terminate(proctree.load(record)[1], grace_s=0.5) == {}
        time.sleep(0.2)
        assert bystander.poll() is None  # still running: it is not the process that was recorded
    finally:
        bystander.kill()
        bystander.wait()


def test_only_processes_carrying_the_records_marker_are_ended(tmp_path):
    """A record is a file anyone can plant: a process is ended by a later run only if the runner's marker is in its
    environment. Both processes here are recorded with their true PID and start time."""
    import os

    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    ours = subprocess.Popen(sleep, env={**os.environ, proctree.MARKER: "m" * 32})
    bystander = subprocess.Popen(sleep, env={k: v for k, v in os.environ.items() if k != proctree.MARKER})
    try:
        record = tmp_path / "procs.json"
        procs = {p.pid: psutil.Process(p.pid).create_time() for p in (ours, bystander)}
        wait = time.monotonic() + 10
        while time.monotonic() < wait and proctree.MARKER not in psutil.Process(ours.pid).environ():
            time.sleep(0.05)  # the environment is readable once the interpreter has started
        proctree.save(record, procs, "m" * 32)
        marker, loaded = proctree.load(record)
        assert loaded == procs and proctree.marked(loaded, marker) == {ours.pid: procs[ours.pid]}
        assert proctree.marked(loaded, "x" * 32) == {} and proctree.marked(loaded, None) == {}
        assert proctree.terminate(proctree.marked(loaded, marker), grace_s=1.0, reap=ours.poll) == {}
        assert ours.wait(timeout=10) is not None and bystander.poll() is None
        record.write_text(json.dumps({str(bystander.pid): procs[bystander.pid]}))  # the old format: no marker
        assert proctree.load(record) == (None, {})
    finally:
        for p in (ours, bystander):
            p.kill()
            p.wait()
