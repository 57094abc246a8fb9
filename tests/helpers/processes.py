"""No process outlives its test, nor the test run.

Every process started by the tests is stopped in the teardown of the fixture that
started it (conftest.procs, run_script, the tmux helpers), which still runs when
a test times out: pytest-timeout's signal method raises in the test, and
pyproject.toml pins that method (the thread method would end pytest at once). A
SIGTERM to pytest (a CI job cancelled) becomes KeyboardInterrupt, after which
pytest still tears every fixture down.

What escapes anyway (a grandchild orphaned when its parent was killed, so no longer
our descendant) is found by its environment: every process of the run inherits
SECURECHAT_TEST_RUN=<id of this run>. After each test, what that test left running
is killed and the test fails; at the end of the session, anything of the run still
running is killed and the run fails. conftest imports the fixture and the hooks.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

TEST_RUN_ENV = "SECURECHAT_TEST_RUN"
LEFTOVER_GRACE_S = 10.0  # a process told to stop may take a moment to go

# Set before any test starts a process, so that every one inherits it.
os.environ[TEST_RUN_ENV] = uuid.uuid4().hex


def processes_of_this_run(marker: str | None = None) -> dict[int, str]:
    """Live processes (pid -> command line) whose environment carries this run's marker (or
    `marker`, given as NAME=value), however they were started and whoever their parent is now;
    with no `marker`, also our own children (one just forked has not exec'd the marker yet)."""
    needle = (marker or f"{TEST_RUN_ENV}={os.environ[TEST_RUN_ENV]}").encode() + b"\0"
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                state, parent = f.read().rsplit(b")", 1)[1].split()[:2]
            if state == b"Z":  # exited; only not yet reaped
                continue
            with open(f"/proc/{entry}/environ", "rb") as f:
                marked = b"\0" + needle in b"\0" + f.read()
            if not marked and (marker is not None or int(parent) != os.getpid()):
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                command = f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
        except (OSError, ValueError):  # gone meanwhile, or not ours to read
            continue
        found[int(entry)] = command
    return found


def stop_leftovers(spared: set[int] = frozenset(), grace: float = LEFTOVER_GRACE_S,
                   marker: str | None = None, confirm: bool = False) -> dict[int, str]:
    """Wait up to `grace` for the processes of this run (or of `marker`), except `spared`, to
    exit; SIGKILL the rest. Returns those that had to be killed. A process in the middle of
    execve() reads as unmarked for a moment: `confirm` looks once more before saying none."""
    deadline = time.monotonic() + grace
    while True:
        alive = {pid: cmd for pid, cmd in processes_of_this_run(marker).items() if pid not in spared}
        if not alive and confirm:
            time.sleep(0.2)
            confirm = False
            continue
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return alive


@pytest.fixture(autouse=True)
def no_process_left_behind():
    """Fails the test that leaves a process running (after killing it)."""
    before = set(processes_of_this_run())
    yield
    left = stop_leftovers(spared=before)
    if left:
        pytest.fail("processes left running by this test (now killed):\n" +
                    "\n".join(f"  {pid}: {cmd}" for pid, cmd in left.items()), pytrace=False)


def pytest_configure(config) -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus) -> None:
    """After every fixture is torn down: nothing this run started may still be running."""
    left = stop_leftovers(confirm=True)
    if left:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        lines = [f"{pid}: {cmd}" for pid, cmd in left.items()]
        if reporter is not None:
            reporter.write_sep("!", "processes left running by the test run (now killed)", red=True, bold=True)
            for line in lines:
                reporter.write_line(line, red=True)
        else:
            print("processes left running by the test run (now killed):", *lines, sep="\n", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def stop_process_group(popen: subprocess.Popen, grace: float = 20.0) -> None:
    """Stop a process started with start_new_session=True: SIGTERM to it (it stops what it
    started; our scripts do), then SIGKILL to its whole group."""
    if popen.poll() is None:
        popen.send_signal(signal.SIGTERM)
        try:
            popen.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(popen.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    popen.wait(5)


def run_script(args: list[str], timeout: float, **popen_kwargs) -> subprocess.CompletedProcess:
    """Run a command that starts processes of its own (a script in scripts/), in a process group of its
    own; it is stopped, with what it started, when `timeout` passes or the test ends otherwise
    (subprocess.run would SIGKILL only the command itself and leave its children running)."""
    popen = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True, **popen_kwargs)
    try:
        out, err = popen.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_process_group(popen)
        try:
            out, err = popen.communicate(timeout=5)
        except subprocess.TimeoutExpired:  # something it started still holds the pipes
            out, err = "", ""
        raise AssertionError(f"{args[:3]} still running after {timeout} s; stderr: {err[-2000:]}") from None
    finally:
        stop_process_group(popen)
    return subprocess.CompletedProcess(args, popen.returncode, out, err)
