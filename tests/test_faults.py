"""Faults with real processes: ranks that die, cells wedged by a partial failure,
ranks that cannot start, bad configuration, and processes that must not outlive us.

Restarts go through jupyter_client's real restarter (AsyncIOLoopKernelManager with
autorestart, as jupyter_server runs it); see fault_harness.RestartingKernel.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from fault_harness import RestartingKernel, figure, install_spec, owned_children, wait_for
from jupyter_client.manager import KernelManager

from kernel_harness import (
    collect_until_idle,
    iopub_until,
    kill_pids,
    printed_by,
    reply_to,
    run_cell,
    wait_gone,
)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def specs(kernel_prefix: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    broken = tmp_path_factory.mktemp("broken-zmq")
    (broken / "zmq.py").write_text(
        "raise ImportError('libzmq.so.5: cannot open shared object file (nbdist test)')\n")
    stuck = tmp_path_factory.mktemp("stuck-rank")
    (stuck / "sitecustomize.py").write_text(textwrap.dedent("""\
        import os, sys, threading
        if os.environ.get("RANK") == "1":
            print("rank 1 is stuck in sitecustomize", file=sys.stderr, flush=True)
            threading.Event().wait()
        """))
    # rank 1 of every generation but the first dies a moment after it is ready
    dies = tmp_path_factory.mktemp("dies-after-start")
    (dies / "sitecustomize.py").write_text(textwrap.dedent(f"""\
        import os, threading
        marker = {str(dies / "started-once")!r}
        if os.environ.get("RANK") == "1":
            if os.path.exists(marker):
                threading.Timer(2.0, os._exit, (5,)).start()
            else:
                open(marker, "w").close()
        """))
    # rank 1 of the first start only fails (a clash with another process, say)
    flaky = tmp_path_factory.mktemp("fails-first-start")
    (flaky / "sitecustomize.py").write_text(textwrap.dedent(f"""\
        import os, sys
        marker = {str(flaky / "failed-once")!r}
        if os.environ.get("RANK") == "1" and not os.path.exists(marker):
            open(marker, "w").close()
            print("rank 1: address in use (nbdist test)", file=sys.stderr, flush=True)
            os._exit(3)
        """))
    return {
        "torch": install_spec(kernel_prefix, "nbdist-fault-torch", 2, backend="gloo"),
        "ct5": install_spec(kernel_prefix, "nbdist-fault-ct5", 2, backend="gloo",
                            collective_timeout=5),
        # (these inject faults at interpreter start-up: ranks started by exec, not fork)
        "import_error": install_spec(kernel_prefix, "nbdist-fault-import", 2,
                                     init_process_group=False, fork_server=False,
                                     env={"PYTHONPATH": str(broken)}),
        "start_timeout": install_spec(kernel_prefix, "nbdist-fault-timeout", 2,
                                      init_process_group=False, start_timeout=5,
                                      fork_server=False, env={"PYTHONPATH": str(stuck)}),
        "fails_first_start": install_spec(kernel_prefix, "nbdist-fault-flaky", 2,
                                          init_process_group=False, fork_server=False,
                                          env={"PYTHONPATH": str(flaky)}),
        "dies_at_start": install_spec(kernel_prefix, "nbdist-fault-dies", 2,
                                      init_process_group=False, fork_server=False,
                                      env={"PYTHONPATH": str(dies)}),
    }


@pytest.fixture
def restarting():
    """Factory of kernels under the real restarter; all shut down and checked after."""
    started: list[RestartingKernel] = []

    def start(name: str = "nbdist-test-2") -> RestartingKernel:
        k = RestartingKernel(name)
        started.append(k)
        return k

    yield start
    leftovers = [pid for k in started for pid in k.shutdown()]
    assert not leftovers, f"processes left behind: {leftovers}"


def stderr_of(run) -> str:
    return run.stream_text("stderr")


# -- 1. rank death during a cell ------------------------------------------------------
DEATHS = {
    # cause: (what rank 1 does after its last words, how the error must describe it)
    "exit": ("os._exit(7)", "exited with exit code 7"),
    "sigkill": ("os.kill(os.getpid(), signal.SIGKILL)", "killed by signal SIGKILL"),
    "segfault": ("ctypes.string_at(0)", "killed by signal SIGSEGV"),
    # the test SIGKILLs the rank while it holds memory, as the OOM killer does
    "oom": ("time.sleep(600)", "killed by signal SIGKILL (out of memory?"),
}


def rank_pids(kc) -> dict[int, int]:
    run = run_cell(kc, "import os\nprint('PID', rank, os.getpid())")
    assert run.status == "ok", run.reply["content"]
    return {int(line.split()[-2]): int(line.split()[-1])
            for line in run.stream_text().splitlines()}


@pytest.mark.parametrize("cause", list(DEATHS))
def test_rank_death_ends_the_cell_and_the_kernel_heals_itself(start_kernel, cause):
    """A bare KernelManager (no restarter, as scripts, nbclient and papermill have it): the
    multiplexer brings back N new ranks itself."""
    action, described = DEATHS[cause]
    k = start_kernel("nbdist-test-2")
    mux = k.mux_pid
    old_pids = [p for p in k.pids() if p not in (mux, k.agent_pid)]
    code = textwrap.dedent(f"""\
        import ctypes, os, signal, sys, time
        if rank == 1:
            hog = bytearray(64 * 2**20)
            print(f'last words of rank 1', file=sys.stderr, flush=True)
            {action}
        time.sleep(600)  # rank 0: the cell must not wait for it
        """)
    msg_id = k.kc.execute(code)
    iopub = []
    died = time.monotonic()  # (at most this late: the cell kills rank 1 at once)
    if cause == "oom":
        while "last words" not in "".join(m["content"].get("text", "") for m in iopub):
            msg = k.kc.get_iopub_msg(timeout=60)
            if msg["parent_header"].get("msg_id") == msg_id:
                iopub.append(msg)
        # (a forked rank is named after its rank: its environ is the agent's)
        victim = [c for c in psutil.Process(mux).children(recursive=True)
                  if c.name() == "nbdist-rank-1"]
        assert len(victim) == 1
        died = time.monotonic()
        victim[0].kill()  # SIGKILL, as the OOM killer does
    iopub += collect_until_idle(k.kc, msg_id, timeout=60)
    reply = reply_to(k.kc, msg_id, timeout=10)
    ended = time.monotonic()
    content = reply["content"]
    assert content["status"] == "error" and content["ename"] == "RankDied", content
    assert "rank 1" in content["evalue"] and described in content["evalue"], content["evalue"]
    errors = [m["content"] for m in iopub if m["msg_type"] == "error"]
    assert len(errors) == 1 and errors[0]["ename"] == "RankDied"
    traceback = "\n".join(errors[0]["traceback"])
    assert described in traceback
    assert "Its last stderr lines:" in traceback and "last words of rank 1" in traceback
    # ipykernel's and debugpy's start-up chatter is left out
    assert "without encryption" not in traceback and "frozen modules" not in traceback
    assert "Starting 2 new ranks" in traceback and "variables" in traceback
    if cause == "segfault":
        assert "Segmentation fault" in traceback  # faulthandler's report, from stderr
    assert len(traceback.splitlines()) <= 14, traceback
    figure(f"death during cell, cause={cause}: {ended - died:.2f}s from the death "
           f"to the cell's error")
    assert ended - died < 10

    # the next cell runs on two new ranks of the same kernel process, and says so once
    run = run_cell(k.kc, "print(rank, world_size, 'x' in dir())", timeout=60)
    healed = time.monotonic()
    assert run.status == "ok", run.reply["content"]
    assert sorted(run.stream_text().splitlines()) == ["[rank 0] 0 2 False",
                                                      "[rank 1] 1 2 False"]
    assert "These are new ranks (rank 1 died)" in stderr_of(run)
    assert "last words" not in stderr_of(run)  # the full report is not repeated
    assert k.mux_pid == mux
    assert "new ranks" not in stderr_of(run_cell(k.kc, "pass"))
    orphans = wait_gone(old_pids, timeout=10)
    figure(f"death during cell, cause={cause}: next cell done {healed - died:.2f}s after "
           f"the death; orphans of the old ranks: {len(orphans)}")
    assert orphans == []
    assert healed - died < 30


def test_sigkilled_rank_in_a_bare_kernel_manager_errors_at_once_and_heals(start_kernel):
    """The issue's acceptance check: the cell errors within 1 s naming the rank; the next
    cell runs on N new ranks within 15 s of the death."""
    k = start_kernel("nbdist-test-4")
    pids = rank_pids(k.kc)
    msg_id = k.kc.execute("import time\ntime.sleep(600)")
    wait_for(lambda: all(psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                         for p in pids.values()), 10, "the ranks")
    collect_until_status(k.kc, msg_id, "busy")
    killed = time.monotonic()
    os.kill(pids[2], signal.SIGKILL)
    collect_until_idle(k.kc, msg_id, timeout=30)
    reply = reply_to(k.kc, msg_id, timeout=10)
    errored = time.monotonic()
    assert "rank 2" in reply["content"]["evalue"], reply["content"]
    run = run_cell(k.kc, "print(rank)", timeout=60)
    healed = time.monotonic()
    assert sorted(run.stream_text().splitlines()) == [f"[rank {r}] {r}" for r in range(4)]
    assert set(rank_pids(k.kc).values()).isdisjoint(pids.values())
    figure(f"bare KernelManager, 4 ranks, rank 2 SIGKILLed: cell error after "
           f"{errored - killed:.2f}s, next cell done {healed - killed:.2f}s after the kill")
    assert errored - killed < 1.0
    assert healed - killed < 15


def collect_until_status(kc, msg_id: str, state: str) -> None:
    for msg in iopub_until(kc, 60):
        if (msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "status"
                and msg["content"]["execution_state"] == state):
            return
    raise TimeoutError(f"no {state} for {msg_id}")


def test_under_jupyters_restarter_the_kernel_process_stays(restarting):
    """Under jupyter_server's restarter, self-healing needs no restart of the kernel."""
    k = restarting()
    mux = k.mux_pid
    victim = k.rank_pids()[0]
    os.kill(victim, signal.SIGKILL)
    # (reaped by the multiplexer: it knows; a cell sent before that would run on the
    # dead ranks and fail with RankDied, as any cell running at the death does)
    wait_for(lambda: not psutil.pid_exists(victim), 10, "the multiplexer to reap the rank")
    run = run_cell(k.kc, "print(rank)", timeout=60)
    assert run.status == "ok", run.reply["content"]
    assert k.mux_pid == mux and k.restarts == [] and k.dead == []


# -- 2. rank death while idle -----------------------------------------------------------
def test_rank_death_while_idle_is_explained_in_the_next_cell(start_kernel):
    k = start_kernel("nbdist-test-2")
    run_cell(k.kc, "import subprocess, sys\nx = 1\n"
                   "child = subprocess.Popen([sys.executable, '-c', "
                   "'import time; time.sleep(600)'])")
    old_pids = [p for p in k.pids() if p not in (k.mux_pid, k.agent_pid)]
    assert len(old_pids) == 4  # 2 ranks, a child of each (the agent stays)
    victim = rank_pids(k.kc)[1]
    killed = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    orphans = wait_gone(old_pids, timeout=10)
    gone = time.monotonic()
    run = run_cell(k.kc, "print('x' in dir())", timeout=60)
    assert run.status == "ok"
    assert printed_by(run.stream_text(), "False") == 2
    note = stderr_of(run)
    assert f"While the kernel was idle, rank 1 (pid {victim}) was killed by signal SIGKILL" \
        in note, note
    assert "These are new ranks" in note
    # the note is shown once
    assert "new ranks" not in stderr_of(run_cell(k.kc, "pass"))
    figure(f"death while idle: old ranks and their children gone {gone - killed:.2f}s "
           f"after the kill; orphans: {len(orphans)}")
    assert orphans == []


def test_a_rank_that_keeps_dying_stops_the_loop_with_the_cause(start_kernel, specs):
    k = start_kernel(specs["dies_at_start"])
    run = run_cell(k.kc, "print('first')", timeout=120)
    assert run.status == "ok"  # generation 1 lives; later ones die at once
    os.kill(rank_pids(k.kc)[1], signal.SIGKILL)
    deadline = time.monotonic() + 120
    while True:
        run = run_cell(k.kc, "print('again')", timeout=120)
        evalue = run.reply["content"].get("evalue", "")
        # (a rank that dies before its generation is ready fails that start, as any
        # start failure: the loop stops just the same)
        if run.status == "error" and ("stopped starting new ranks" in evalue
                                      or "failed to start" in evalue):
            break
        assert time.monotonic() < deadline, run.reply["content"]
    assert "exit code 5" in evalue or "ranks died 3 times" in evalue, evalue
    assert "Restart the kernel" in evalue
    # every rank is stopped, and it stays that way: no further starts
    alone = sorted([k.mux_pid, k.agent_pid])
    wait_for(lambda: sorted(k.pids()) == alone, 15, "the last ranks to be stopped")
    assert run_cell(k.kc, "pass").status == "error"
    assert sorted(k.pids()) == alone


# -- 3. partial failure, hung collective, second interrupt --------------------------------
def test_a_rank_hung_outside_torch_is_diagnosed_and_a_second_interrupt_brings_new_ranks(
        start_kernel, specs):
    """Rank 1 fails; rank 0 is stuck in code fail-fast cannot end (a C call that ignores
    KeyboardInterrupt, here: SIGINT ignored). The cell says so; one interrupt does not
    help, a second brings up new ranks."""
    k = start_kernel(specs["torch"])
    mux = k.mux_pid
    old_pids = [p for p in k.pids() if p not in (mux, k.agent_pid)]
    msg_id = k.kc.execute("import signal, time\nif rank == 1:\n    raise ValueError('rank 1 "
                          "broke')\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                          "while True:\n    time.sleep(0.05)\n")
    seen: list[dict] = []

    def stderr_with(text: str):
        while True:
            msg = k.kc.get_iopub_msg(timeout=30)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            seen.append(msg)
            if msg["msg_type"] == "stream" and text in msg["content"]["text"]:
                return msg["content"]["text"]

    diagnosis = stderr_with("still running")
    assert "rank 1 failed (ValueError: rank 1 broke)" in diagnosis
    assert "rank 0 is still running" in diagnosis and "Interrupt" in diagnosis
    k.km.interrupt_kernel()
    notice = stderr_with("after the interrupt")
    assert "rank 0 is still running" in notice and "Interrupt again" in notice
    second = time.monotonic()
    k.km.interrupt_kernel()
    reply = reply_to(k.kc, msg_id, timeout=30)
    ended = time.monotonic()
    assert reply["content"]["status"] == "error"
    assert "rank 0 did not stop after an interrupt" in json.dumps(reply["content"])
    run = run_cell(k.kc, "import torch\nt = torch.ones(1)\ndist.all_reduce(t)\nprint(t.item())",
                   timeout=60)
    assert run.status == "ok", run.reply["content"]
    assert printed_by(run.stream_text(), "2.0") == 2
    assert "an interrupt could not stop the last cell" in stderr_of(run)
    assert k.mux_pid == mux
    assert wait_gone(old_pids, timeout=10) == []
    figure(f"second interrupt to cell error: {(ended - second) * 1000:.0f} ms; old ranks gone")


def test_collective_timeout_bounds_a_collective_a_rank_never_enters(start_kernel, specs):
    """Rank 1 is busy for 8 s (not failed, not in a collective): rank 0's lone all_reduce
    gives up after collective_timeout=5 s."""
    k = start_kernel(specs["ct5"])
    started = time.monotonic()
    run = run_cell(k.kc, "import time, torch\nif rank == 1:\n    time.sleep(8)\nelse:\n"
                         "    started = time.monotonic()\n    t = torch.ones(1)\n"
                         "    try:\n        dist.all_reduce(t)\n    except Exception as err:\n"
                         "        print('gave up after', round(time.monotonic() - started),"
                         " type(err).__name__)\n", timeout=60)
    took = time.monotonic() - started
    assert run.status == "ok", run.reply["content"]
    gave_up = [line for line in run.stream_text().splitlines() if "gave up after" in line]
    assert len(gave_up) == 1 and gave_up[0].startswith("[rank 0]"), run.stream_text()
    assert 4 <= int(gave_up[0].split()[-2]) <= 7, gave_up
    figure(f"collective_timeout=5: a lone collective gave up ({gave_up[0]}); cell {took:.1f}s")


# -- 4. start failures ----------------------------------------------------------------------
def test_a_rank_that_cannot_import_fails_the_first_cell_with_its_stderr(start_kernel, specs):
    k = start_kernel(specs["import_error"])
    run = run_cell(k.kc, "print('never')", timeout=60)
    content = run.reply["content"]
    assert content["status"] == "error" and content["ename"] == "RankStartError"
    assert "failed to start" in content["evalue"] and "exit code 1" in content["evalue"]
    assert "libzmq.so.5: cannot open shared object file (nbdist test)" in content["evalue"]
    assert "never" not in run.stream_text()
    # the ranks are gone; the multiplexer (and its agent) stay to report the failure
    alone = sorted([k.mux_pid, k.agent_pid])
    assert wait_for(lambda: sorted(k.pids()) == alone, 10, "the ranks to be gone")


def test_a_start_in_which_a_rank_died_is_tried_once_more_with_the_cause_logged(
        start_kernel, specs, tmp_path):
    log = tmp_path / "kernel.log"
    with log.open("wb") as stderr:
        k = start_kernel(specs["fails_first_start"], stderr=stderr)
        run = run_cell(k.kc, "print(rank)", timeout=120)
    assert run.status == "ok", run.reply["content"]
    assert sorted(run.stream_text().splitlines()) == ["[rank 0] 0", "[rank 1] 1"]
    text = log.read_text()
    retried = [line for line in text.splitlines() if "trying once more" in line]
    assert len(retried) == 1, text
    assert "exit code 3" in retried[0] or "exit code 3" in text, text
    assert "rank 1: address in use (nbdist test)" in text, text


def test_start_timeout_fails_the_first_cell_naming_the_stuck_rank(start_kernel, specs):
    k = start_kernel(specs["start_timeout"])
    ranks = wait_for(lambda: [p for p in k.pids() if p not in (k.mux_pid, k.agent_pid)], 10,
                     "ranks to start")
    run = run_cell(k.kc, "print('never')", timeout=60)
    content = run.reply["content"]
    assert content["ename"] == "RankStartError", content
    assert "ranks [1] did not become ready within start_timeout=5s" in content["evalue"]
    assert "rank 1 is stuck in sitecustomize" in content["evalue"]
    assert wait_gone(ranks, timeout=10) == []


@pytest.mark.parametrize(("config", "named"), [
    ({"nproc": 0}, "nproc"),
    ({"backend": "mpi"}, "backend"),
    ({"collective_timeout": -1}, "collective_timeout"),
    ({"start_timeout": "soon"}, "start_timeout"),
    ({"launcher": "no-such-launcher"}, "launcher"),
    ({"nprocs": 4}, "nprocs"),
])
def test_bad_configuration_is_refused_naming_the_setting(kernel_prefix, config, named):
    name = install_spec(kernel_prefix, f"nbdist-bad-{named}", 2, **config)
    before = owned_children()
    km = KernelManager(kernel_name=name)
    with pytest.raises(ValueError, match=named):
        km.start_kernel()
    assert not km.has_kernel
    assert owned_children() <= before


# -- 5. no orphans ----------------------------------------------------------------------
# a child in the rank's process group, and one in a session of its own (it leaves the
# group: only the child subreaper still knows it)
SPAWN_CHILD = ("import subprocess, sys\n"
               "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
               "loner = subprocess.Popen(['sleep', '600'], start_new_session=True)")


def test_restart_and_shutdown_take_what_the_ranks_started_down(start_kernel):
    k = start_kernel("nbdist-test-2")
    run_cell(k.kc, SPAWN_CHILD)
    before = k.pids()
    assert len(before) == 8  # multiplexer, agent, 2 ranks, 2 children each
    k.km.restart_kernel(now=False)
    k.kc.wait_for_ready(timeout=60)
    orphans = wait_gone(before, timeout=10)
    figure(f"orphans after restart (2 ranks + 2 children each): {len(orphans)}")
    assert orphans == []
    run_cell(k.kc, SPAWN_CHILD)
    again = k.pids()
    assert len(again) == 8
    k.km.shutdown_kernel(now=True)  # SIGKILL of the multiplexer's process group
    orphans = wait_gone(again, timeout=10)
    figure(f"orphans after shutdown_kernel(now=True): {len(orphans)}")
    assert orphans == []


def test_sigkill_of_the_multiplexer_takes_the_ranks_children_down(start_kernel):
    k = start_kernel("nbdist-test-2")
    run_cell(k.kc, SPAWN_CHILD)
    pids = [p for p in k.pids() if p != k.mux_pid]
    assert len(pids) == 7
    killed = time.monotonic()
    os.kill(k.mux_pid, signal.SIGKILL)
    orphans = wait_gone(pids, timeout=10)
    figure(f"SIGKILL of the multiplexer: orphans {len(orphans)}, all gone after "
           f"{time.monotonic() - killed:.2f}s")
    assert orphans == []


def test_no_key_left_on_disk_or_in_an_environment(start_kernel):
    k = start_kernel("nbdist-test-2")
    run = run_cell(k.kc, "from ipykernel.kernelapp import IPKernelApp\n"
                         "app = IPKernelApp.instance()\n"
                         "print(app.session.key.decode(), app.abs_connection_file)")
    keys = {line.split()[-2] for line in run.stream_text().splitlines()}
    folder = os.path.dirname(run.stream_text().split()[-1])
    assert len(keys) == 2 and all(len(key) == 64 for key in keys)
    for pid in k.pids():
        environ = Path(f"/proc/{pid}/environ").read_bytes().decode("utf-8", "replace")
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode("utf-8", "replace")
        assert not any(key in environ or key in cmdline for key in keys), pid
    on_disk = [p for p in Path(folder).rglob("*") if p.is_file()]
    assert not any(key in p.read_text(errors="replace") for p in on_disk for key in keys)
    os.kill(k.mux_pid, signal.SIGKILL)
    wait_gone(k.pids(), timeout=10)
    # a later kernel removes the private folder of a kernel that is gone
    later = start_kernel("nbdist-test-1")
    assert not os.path.exists(folder), os.listdir(folder)
    del later


OWNER = """
import json, subprocess, sys
from jupyter_client.manager import KernelManager
sys.path.insert(0, {tests!r})
from kernel_harness import process_tree, run_cell
km = KernelManager(kernel_name="nbdist-test-2")
km.start_kernel()
kc = km.client()
kc.start_channels()
kc.wait_for_ready(timeout=60)
run_cell(kc, {spawn!r})
print(json.dumps(process_tree(km.provisioner.pid)), flush=True)
sys.stdin.read()  # until the test kills us
"""


def test_sigkill_of_the_kernel_manager_owner_leaves_nothing_behind():
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER.format(tests=str(REPO / "tests"), spawn=SPAWN_CHILD)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        pids = json.loads(owner.stdout.readline())
        assert len(pids) == 8  # multiplexer, agent, 2 ranks, 2 children each
        killed = time.monotonic()
        owner.kill()
        owner.wait()
        orphans = wait_gone(pids, timeout=15)
        figure(f"SIGKILL of the KernelManager's owner: orphans {len(orphans)}, all gone "
               f"after {time.monotonic() - killed:.2f}s")
        assert orphans == []
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()


EARLY_OWNER = """
import sys
from jupyter_client.manager import KernelManager
km = KernelManager(kernel_name="nbdist-test-2")
km.start_kernel()
print(km.provisioner.pid, flush=True)
sys.stdin.read()  # until the test kills us
"""


def marked(marker: str) -> list[int]:
    """Processes that carry the test's marker in their environment: everything the owner
    started, however deep, found without relying on parent links (they change)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("NBDIST_TEST_MARKER") == marker:
                found.append(proc.pid)
        except (psutil.Error, OSError):
            continue
    return found


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.1, 0.2, 0.5, 1.5])
def test_owner_killed_at_any_instant_of_the_start_leaves_nothing(kernel_prefix, delay):
    marker = f"early-{delay}-{os.getpid()}-{time.monotonic_ns()}"
    env = dict(os.environ, NBDIST_TEST_MARKER=marker)
    owner = subprocess.Popen([sys.executable, "-c", EARLY_OWNER], env=env,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        owner.stdout.readline()  # start_kernel returned
        time.sleep(delay)  # (the instant to kill at, not a wait for readiness)
        owner.kill()
        owner.wait()
        deadline = time.monotonic() + 5
        left = marked(marker)
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = [p for p in marked(marker) if psutil.Process(p).status()
                    != psutil.STATUS_ZOMBIE] if left else []
        figure(f"owner SIGKILLed {delay:.2f}s after start_kernel returned: "
               f"{len(left)} processes left after 5 s")
        assert left == []
    finally:
        kill_pids(marked(marker))
