"""Multi-rank kernels with the ``slurm`` and ``mpi`` launchers, on the real test schedulers:
4 ranks over 2 nodes, torchrun's environment, ``all_reduce``, labels, encrypted links,
interrupt, a killed rank and a lost node healed, nothing left after shutdown, restart or a
killed multiplexer."""

from __future__ import annotations

import contextlib
import os
import signal
import time

import psutil
import zmq
from cluster_kernels import ClusterKernel, first_reply
from conftest import Site
from slurm_cluster import poll
from zmq.utils.monitor import recv_monitor_message

from kernel_harness import collect_until_idle, iopub_until, reply_to, wait_gone

ALL_REDUCE = ("import torch\nt = torch.tensor([rank + 1.0])\ndist.all_reduce(t)\n"
              "print(int(t.item()))")


def node_of(site: Site, r: dict) -> str:
    """The node a rank runs on, as the scheduler names it."""
    return r["env"]["SLURMD_NODENAME"] if site.launcher == "slurm" else r["hostname"]


def check_all_reduce(k: ClusterKernel, site: Site) -> None:
    run = k.cell(ALL_REDUCE)
    assert run.status == "ok", run.reply["content"]
    lines = sorted(run.stream_text().splitlines())
    a, b = site.nodes
    assert lines == [f"[{a}:0] 10", f"[{a}:1] 10", f"[{b}:2] 10", f"[{b}:3] 10"]


def start_sleeper(k: ClusterKernel, seconds: int = 120) -> str:
    """A cell that says 'go' on every rank, then sleeps; returns once all said it."""
    msg_id = k.kc.execute(f"print('go', flush=True)\nimport time\ntime.sleep({seconds})")
    said = 0
    for msg in iopub_until(k.kc, 60):
        if (msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream"
                and msg["content"]["text"].strip().endswith("go")):
            said += msg["content"]["text"].count("go")
            if said == 4:
                return msg_id
    raise AssertionError("the ranks did not start the cell")


def finish(k: ClusterKernel, msg_id: str, timeout: float = 60) -> dict:
    collect_until_idle(k.kc, msg_id, timeout)
    return reply_to(k.kc, msg_id, timeout)["content"]


def auth_refused(port: int, server_key: bytes) -> bool:
    """A CURVE client with a key of its own is turned away by the rank's ZAP handler."""
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        public, secret = zmq.curve_keypair()
        sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = (
            server_key, public, secret)
        monitor = sock.get_monitor_socket()
        sock.connect(f"tcp://127.0.0.1:{port}")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if monitor.poll(500):
                event = recv_monitor_message(monitor)["event"]
                if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                    return True
                if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                    return False
        return False
    finally:
        ctx.destroy(linger=0)


def test_four_ranks_over_two_nodes(site: Site, kernels) -> None:
    k: ClusterKernel = kernels(site.install("basic"), site.env)
    assert first_reply(k).status == "ok"
    ranks = k.ranks()
    a, b = site.nodes
    assert [node_of(site, r) for r in ranks] == [a, a, b, b]
    for i, r in enumerate(ranks):
        env = r["env"]
        assert {key: env[key] for key in ("RANK", "LOCAL_RANK", "GROUP_RANK", "WORLD_SIZE",
                                          "LOCAL_WORLD_SIZE", "GROUP_WORLD_SIZE",
                                          "ROLE_RANK", "ROLE_WORLD_SIZE")} == {
            "RANK": str(i), "LOCAL_RANK": str(i % 2), "GROUP_RANK": str(i // 2),
            "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "GROUP_WORLD_SIZE": "2",
            "ROLE_RANK": str(i), "ROLE_WORLD_SIZE": "4"}
        assert env["TORCHELASTIC_USE_AGENT_STORE"] == "True"
        assert env["MASTER_ADDR"] == "127.0.0.1"
        assert env["GLOO_SOCKET_IFNAME"] == "lo"
        # the node agent's task variables would make frameworks take the node for the rank
        assert not {"SLURM_PROCID", "SLURM_NTASKS", "OMPI_COMM_WORLD_RANK"} & set(env)
    assert len({r["env"]["MASTER_PORT"] for r in ranks}) == 1
    # one agent and one node link per node
    assert ranks[0]["agent"] == ranks[1]["agent"] != ranks[2]["agent"] == ranks[3]["agent"]
    assert ranks[0]["link"] == ranks[1]["link"] != ranks[2]["link"] == ranks[3]["link"]
    check_all_reduce(k, site)

    # node 0's agent serves the store on the node's address only, never on every interface
    port = int(ranks[0]["env"]["MASTER_PORT"])
    listening = [c.laddr.ip for c in psutil.net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
    assert listening == ["127.0.0.1"]

    # the links to the rank kernels are CURVE: a client with a key of its own is refused
    run = k.cell("from ipykernel.kernelapp import IPKernelApp\n_a = IPKernelApp.instance()\n"
                 "print(_a.shell_port, _a.curve_publickey.decode())", silent=False)
    shell_port, server_key = run.stream_text().splitlines()[0].split("] ", 1)[1].split()
    assert auth_refused(int(shell_port), server_key.encode())
    if site.slurm is not None:
        assert len(site.jobs()) == 1  # the allocation of its own


def test_interrupt_reaches_every_rank(site: Site, kernels) -> None:
    k: ClusterKernel = kernels(site.install("basic"), site.env)
    first_reply(k)
    msg_id = start_sleeper(k)
    k.km.interrupt_kernel()
    reply = finish(k, msg_id)
    assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt", reply
    check_all_reduce(k, site)


def test_killed_rank_fails_the_cell_and_new_ranks_come(site: Site, kernels) -> None:
    k: ClusterKernel = kernels(site.install("basic"), site.env)
    first_reply(k)
    before = k.ranks()
    msg_id = start_sleeper(k)
    os.kill(before[2]["pid"], signal.SIGKILL)
    reply = finish(k, msg_id)
    assert reply["status"] == "error" and reply["ename"] == "RankDied", reply
    assert "rank 2" in reply["evalue"] and "SIGKILL" in reply["evalue"]
    after = k.ranks()  # (waits for the new ranks)
    assert not {r["pid"] for r in before} & {r["pid"] for r in after}
    # the same node agents forked them: the step lives on
    assert [r["link"] for r in after] == [r["link"] for r in before]
    check_all_reduce(k, site)


def test_lost_node_is_noticed_by_heartbeat_and_replaced(site: Site, kernels) -> None:
    """Node 2 freezes (its node link, agent and ranks stopped): the heartbeat says it is
    lost, the cell fails, and a new step brings up every rank again."""
    k: ClusterKernel = kernels(site.install("basic"), site.env)
    first_reply(k)
    before = k.ranks()
    frozen = sorted({before[2]["link"], before[2]["agent"], before[2]["pid"],
                     before[3]["pid"]})
    msg_id = start_sleeper(k)
    t0 = time.monotonic()
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        reply = finish(k, msg_id)
        assert reply["status"] == "error" and reply["ename"] == "RankDied", reply
        assert "lost (node 1" in reply["evalue"] and "no heartbeat" in reply["evalue"], \
            reply["evalue"]
        assert time.monotonic() - t0 < 4 + 10
        after = k.ranks()
        assert {r["link"] for r in after}.isdisjoint(r["link"] for r in before)
        check_all_reduce(k, site)
    finally:
        # The node wakes up (a real lost node may come back): what is left of it ends by
        # itself, its multiplexer and step being gone. (slurmstepd kills a step's processes
        # even while they are stopped; under mpiexec, orted killed the node link, and the
        # agent and ranks end once they run again.)
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    assert wait_gone(frozen, timeout=30) == []


def test_shutdown_and_restart_leave_no_step_or_process(site: Site, kernels) -> None:
    k: ClusterKernel = kernels(site.install("basic"), site.env)
    first_reply(k)
    k.ranks()
    step = [p.pid for p in psutil.Process(k.mux_pid).children(recursive=True)]
    old = sorted(k.pids() | set(step))
    jobs = site.jobs()
    k.km.restart_kernel(now=False)
    k.kc.wait_for_ready(timeout=120)
    check_all_reduce(k, site)
    assert wait_gone(old, timeout=30) == []
    if site.slurm is not None:
        assert len(site.jobs()) == 1 and site.jobs() != jobs  # a new allocation
    k.ranks()
    k.seen.update(p.pid for p in psutil.Process(k.mux_pid).children(recursive=True))
    k.kc.stop_channels()
    k.km.shutdown_kernel(now=False)
    assert wait_gone(sorted(k.pids()), timeout=30) == []
    poll(lambda: not site.jobs(), 30, "squeue to empty")


def test_killed_multiplexer_leaves_no_step_allocation_or_process(site: Site, kernels) -> None:
    """SIGKILL of the kernel: the nodes see their stdin end (srun/mpiexec forward it) and
    end their ranks; node 0 cancels the allocation the launcher made."""
    k: ClusterKernel = kernels(site.install("basic"), site.env)
    first_reply(k)
    k.ranks()
    pids = sorted(k.pids() | {p.pid for p in psutil.Process(k.mux_pid).children(
        recursive=True)})
    os.kill(k.mux_pid, signal.SIGKILL)
    assert wait_gone(pids, timeout=30) == []
    poll(lambda: not site.jobs(), 30, "squeue to empty")


def test_dist_init_after_destroy_meets_in_node_0s_store(site: Site, kernels) -> None:
    """No directory is shared across nodes: %dist_init joins a new world through the
    store node 0's agent serves, under a prefix of its own."""
    k: ClusterKernel = kernels(site.install("basic"), site.env)
    first_reply(k)
    run = k.cell("dist.destroy_process_group()")
    assert run.status == "ok", run.reply["content"]
    run = k.cell("%dist_init")
    assert run.status == "ok", run.reply["content"]
    check_all_reduce(k, site)
