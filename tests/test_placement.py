"""Placement and torchrun environment: invariants (hypothesis), and torch elastic's own
rank assignment as the reference."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nbdist_provisioner.launchers import placement as pl

counts_st = st.lists(st.integers(1, 8), min_size=1, max_size=8)

TORCHRUN_KEYS = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK",
                 "GROUP_WORLD_SIZE", "ROLE_RANK", "ROLE_WORLD_SIZE", "ROLE_NAME",
                 "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT",
                 "TORCHELASTIC_MAX_RESTARTS"}


def slurm_compress(counts: list[int]) -> str:
    """SLURM's ``2(x3),1`` form, as srun writes it."""
    runs: list[list[int]] = []
    for n in counts:
        if runs and runs[-1][0] == n:
            runs[-1][1] += 1
        else:
            runs.append([n, 1])
    return ",".join(str(n) if k == 1 else f"{n}(x{k})" for n, k in runs)


def slurm_env(p: pl.Placement, procid: int | None = None) -> dict[str, str]:
    counts = list(p.tasks_per_node)
    return {"SLURM_PROCID": str(p.rank if procid is None else procid),
            "SLURM_LOCALID": str(p.local_rank), "SLURM_NODEID": str(p.group_rank),
            "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": str(sum(counts)),
            "SLURM_STEP_TASKS_PER_NODE": slurm_compress(counts), "SLURMD_NODENAME": "n1"}


def ompi_env(p: pl.Placement, with_counts: bool) -> dict[str, str]:
    env = {"OMPI_COMM_WORLD_RANK": str(p.rank), "OMPI_COMM_WORLD_SIZE": str(p.world_size),
           "OMPI_COMM_WORLD_LOCAL_RANK": str(p.local_rank),
           "OMPI_COMM_WORLD_LOCAL_SIZE": str(p.local_world_size)}
    if with_counts:
        env[pl.TASKS_PER_NODE_VAR] = ",".join(map(str, p.tasks_per_node))
    return env


@given(counts_st)
def test_plan_invariants(counts: list[int]) -> None:
    ps = pl.plan(counts)
    assert [p.rank for p in ps] == list(range(sum(counts)))
    for node, n in enumerate(counts):
        mine = [p for p in ps if p.group_rank == node]
        assert [p.local_rank for p in mine] == list(range(n))
        # a node's ranks are one block, after every earlier node's
        assert [p.rank for p in mine] == list(range(sum(counts[:node]), sum(counts[:node + 1])))
        assert {p.local_world_size for p in mine} == {n}
    assert {(p.world_size, p.group_world_size) for p in ps} == {(sum(counts), len(counts))}


@given(counts_st, st.text(min_size=1, max_size=20), st.integers(0, 3), st.integers(0, 3))
def test_torchrun_env_is_consistent(counts: list[int], run_id: str, restarts: int,
                                    max_restarts: int) -> None:
    for p in pl.plan(counts):
        env = pl.torchrun_env(p, run_id, restart_count=restarts, max_restarts=max_restarts)
        assert set(env) == TORCHRUN_KEYS  # and never TORCHELASTIC_USE_AGENT_STORE
        assert all(isinstance(v, str) for v in env.values())
        assert env["RANK"] == env["ROLE_RANK"] == str(p.rank)
        assert env["WORLD_SIZE"] == env["ROLE_WORLD_SIZE"] == str(sum(counts))
        assert int(env["RANK"]) == sum(counts[:p.group_rank]) + int(env["LOCAL_RANK"])
        assert env["LOCAL_WORLD_SIZE"] == str(counts[p.group_rank])
        assert env["GROUP_WORLD_SIZE"] == str(len(counts))
        assert env["ROLE_NAME"] == "default"
        assert (env["TORCHELASTIC_RUN_ID"], env["TORCHELASTIC_RESTART_COUNT"],
                env["TORCHELASTIC_MAX_RESTARTS"]) == (run_id, str(restarts), str(max_restarts))


@given(counts_st)
def test_slurm_tasks_per_node_round_trip(counts: list[int]) -> None:
    assert pl.parse_slurm_tasks_per_node(slurm_compress(counts)) == counts


@given(counts_st)
def test_from_slurm_block_distribution(counts: list[int]) -> None:
    for p in pl.plan(counts):
        got = pl.from_slurm(slurm_env(p))
        assert got == pl.Placement(p.rank, p.local_rank, p.group_rank, p.tasks_per_node, "n1")
        assert pl.from_scheduler(slurm_env(p)) == got


@given(counts_st)
def test_from_slurm_refuses_cyclic_distribution(counts: list[int]) -> None:
    # srun -m cyclic deals ranks round-robin over the nodes
    order = [(node, local) for local in range(max(counts))
             for node, n in enumerate(counts) if local < n]
    for procid, (node, local) in enumerate(order):
        p = pl.place(counts, node, local)
        if p.rank == procid:
            assert pl.from_slurm(slurm_env(p, procid)).rank == procid
        else:
            with pytest.raises(pl.PlacementError, match="not placed in blocks"):
                pl.from_slurm(slurm_env(p, procid))


@given(counts_st, st.booleans())
def test_from_openmpi(counts: list[int], with_counts: bool) -> None:
    uniform = len(set(counts)) == 1
    for p in pl.plan(counts):
        env = ompi_env(p, with_counts)
        if with_counts or uniform:
            assert pl.from_openmpi(env) == p
        else:
            # without the plan a non-uniform layout is either refused or caught as inconsistent
            try:
                got = pl.from_openmpi(env)
            except pl.PlacementError:
                continue
            assert got.rank == p.rank and got.local_rank == p.local_rank


def test_from_hydra_uniform() -> None:
    env = {"PMI_RANK": "3", "PMI_SIZE": "4", "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "2"}
    assert pl.from_scheduler(env) == pl.Placement(3, 1, 1, (2, 2))


@pytest.mark.parametrize("env, message", [
    ({}, "not started by srun or mpiexec"),
    ({"SLURM_PROCID": "0", "SLURM_STEP_ID": "0"}, "SLURM_STEP_TASKS_PER_NODE is not set"),
    ({"SLURM_PROCID": "x", "SLURM_STEP_ID": "0", "SLURM_STEP_TASKS_PER_NODE": "2",
      "SLURM_NODEID": "0", "SLURM_LOCALID": "0", "SLURM_STEP_NUM_TASKS": "2"},
     "SLURM_PROCID='x' is not an integer"),
    ({"SLURM_PROCID": "0", "SLURM_STEP_ID": "0", "SLURM_STEP_TASKS_PER_NODE": "2",
      "SLURM_NODEID": "0", "SLURM_LOCALID": "0", "SLURM_STEP_NUM_TASKS": "3"},
     "the scheduler says 3 tasks"),
    ({"SLURM_PROCID": "0", "SLURM_STEP_ID": "0", "SLURM_STEP_TASKS_PER_NODE": "2",
      "SLURM_NODEID": "1", "SLURM_LOCALID": "0", "SLURM_STEP_NUM_TASKS": "2"},
     "node index 1 outside the 1 nodes"),
    ({"OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "3",
      "OMPI_COMM_WORLD_LOCAL_RANK": "0", "OMPI_COMM_WORLD_LOCAL_SIZE": "2"},
     "set NBDIST_TASKS_PER_NODE"),
    ({"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "4",
      "OMPI_COMM_WORLD_LOCAL_RANK": "0", "OMPI_COMM_WORLD_LOCAL_SIZE": "2"},
     "not placed in blocks"),
    ({"SLURM_PROCID": "1", "SLURM_STEP_ID": "0", "SLURM_STEP_TASKS_PER_NODE": "2(x2)",
      "SLURM_NODEID": "1", "SLURM_LOCALID": "0", "SLURM_STEP_NUM_TASKS": "4"},
     "SLURM_PROCID=1, but node 1 local rank 0 is rank 2"),
    ({"SLURM_PROCID": "0", "SLURM_STEP_ID": "0", "SLURM_STEP_TASKS_PER_NODE": "2(x",
      "SLURM_NODEID": "0", "SLURM_LOCALID": "0", "SLURM_STEP_NUM_TASKS": "2"},
     "cannot read tasks per node"),
])
def test_bad_environments_say_what_is_wrong(env: dict[str, str], message: str) -> None:
    with pytest.raises(pl.PlacementError, match=message.replace("(", r"\(")):
        pl.from_scheduler(env)


def torch_elastic_ranks(counts: list[int]) -> list[tuple[int, int, int, int, int]]:
    """Run torch elastic's own ``_assign_worker_ranks`` for one agent per node, in threads
    over one store, and list (group, local, global, role rank, world size) per worker."""
    api = pytest.importorskip("torch.distributed.elastic.agent.server.api")
    from torch.distributed import HashStore

    store = HashStore()
    store.set_timeout(__import__("datetime").timedelta(seconds=30))
    results: dict[int, list] = {}

    def agent(group: int) -> None:
        spec = SimpleNamespace(role="default", local_world_size=counts[group])
        results[group] = api.SimpleElasticAgent._assign_worker_ranks(
            None, store, group, len(counts), spec)

    threads = [threading.Thread(target=agent, args=(g,)) for g in range(len(counts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return [(g, w.local_rank, w.global_rank, w.role_rank, w.world_size)
            for g in range(len(counts)) for w in results[g]]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 4), min_size=1, max_size=4))
def test_matches_torch_elastic_assignment(counts: list[int]) -> None:
    ours = [(p.group_rank, p.local_rank, p.rank, p.rank, p.world_size) for p in pl.plan(counts)]
    assert ours == torch_elastic_ranks(counts)
