"""Ending a cell's whole process tree: descendants in other sessions that ignore SIGTERM included, and never a
process the runner did not start (a recorded PID whose creation time differs is left alone)."""

import subprocess
import sys
import time

import psutil

from harness import proctree

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
        proctree.save(record, {bystander.pid: psutil.Process(bystander.pid).create_time() - 100.0})
        assert proctree.terminate(proctree.load(record), grace_s=0.5) == {}
        time.sleep(0.2)
        assert bystander.poll() is None  # still running: it is not the process that was recorded
    finally:
        bystander.kill()
        bystander.wait()
