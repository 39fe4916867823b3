"""Where each rank runs, and the torchrun environment that follows from it.

Pure functions, no I/O: from a plan (tasks per node) or from what a scheduler put in a
task's environment (SLURM, OpenMPI, MPICH's hydra) to each rank's ``RANK``,
``LOCAL_RANK``, ``GROUP_RANK``, ... exactly as torch elastic's agent assigns them:
nodes (agents, "groups") in order, each node's ranks a contiguous block starting at the
sum of the earlier nodes' local world sizes (``_assign_worker_ranks``), one role
(``default``), so role ranks equal global ranks.

Schedulers number tasks their own way (``srun -m cyclic``, ``mpiexec --map-by node``).
We keep torch's numbering and refuse a placement where the scheduler's global rank
differs from it: a launcher asks for block placement, and a mismatch means it did not
get it, which would silently reorder ranks across nodes.

``MASTER_ADDR``/``MASTER_PORT`` are not here: rank 0 reports them at run time.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate

#: torchrun's ``--role`` default.
DEFAULT_ROLE = "default"
#: What a launcher exports so a task can find its node's block when the scheduler does
#: not say how many tasks each node has (OpenMPI, MPICH): ``"2,2"``.
TASKS_PER_NODE_VAR = "NBDIST_TASKS_PER_NODE"


class PlacementError(ValueError):
    """The environment does not describe a usable placement; says what is wrong."""


@dataclass(frozen=True)
class Placement:
    """One rank's position: node (group) index, rank within node, and the sizes."""

    rank: int
    local_rank: int
    group_rank: int
    tasks_per_node: tuple[int, ...]
    node_name: str | None = None

    @property
    def world_size(self) -> int:
        return sum(self.tasks_per_node)

    @property
    def local_world_size(self) -> int:
        return self.tasks_per_node[self.group_rank]

    @property
    def group_world_size(self) -> int:
        return len(self.tasks_per_node)


def _check_counts(tasks_per_node: Sequence[int]) -> tuple[int, ...]:
    counts = tuple(int(n) for n in tasks_per_node)
    if not counts:
        raise PlacementError("no nodes in the plan")
    if any(n < 1 for n in counts):
        raise PlacementError(f"every node needs at least one task, got {list(counts)}")
    return counts


def node_bases(tasks_per_node: Sequence[int]) -> list[int]:
    """The first global rank of each node (torch elastic's ``base_global_rank``)."""
    return [0, *accumulate(tasks_per_node)][:-1]


def plan(tasks_per_node: Sequence[int]) -> list[Placement]:
    """Every rank's placement for nodes with these task counts, in rank order."""
    counts = _check_counts(tasks_per_node)
    return [Placement(base + local, local, node, counts)
            for node, (base, n) in enumerate(zip(node_bases(counts), counts, strict=True))
            for local in range(n)]


def place(tasks_per_node: Sequence[int], group_rank: int, local_rank: int,
          node_name: str | None = None) -> Placement:
    """The placement of local rank ``local_rank`` on node ``group_rank``."""
    counts = _check_counts(tasks_per_node)
    if not 0 <= group_rank < len(counts):
        raise PlacementError(f"node index {group_rank} outside the {len(counts)} nodes")
    if not 0 <= local_rank < counts[group_rank]:
        raise PlacementError(f"local rank {local_rank} outside the {counts[group_rank]} "
                             f"tasks of node {group_rank}")
    rank = node_bases(counts)[group_rank] + local_rank
    return Placement(rank, local_rank, group_rank, counts, node_name)


_SLURM_COUNT = re.compile(r"^(\d+)(?:\(x(\d+)\))?$")


def parse_slurm_tasks_per_node(text: str) -> list[int]:
    """``"2(x3),1"`` -> ``[2, 2, 2, 1]`` (SLURM's compressed ``*_TASKS_PER_NODE``)."""
    counts: list[int] = []
    for part in text.split(","):
        match = _SLURM_COUNT.match(part.strip())
        if not match:
            raise PlacementError(f"cannot read tasks per node {text!r}")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def parse_tasks_per_node(text: str) -> list[int]:
    """``"2,2"`` (``NBDIST_TASKS_PER_NODE``) -> ``[2, 2]``; SLURM's form is accepted too."""
    return parse_slurm_tasks_per_node(text)


def _int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except KeyError:
        raise PlacementError(f"{name} is not set") from None
    except ValueError:
        raise PlacementError(f"{name}={env[name]!r} is not an integer") from None


def _checked(p: Placement, scheduler_rank: int, scheduler_size: int, rank_var: str) -> Placement:
    if scheduler_size != p.world_size:
        raise PlacementError(f"the scheduler says {scheduler_size} tasks, but tasks per node "
                             f"{list(p.tasks_per_node)} add up to {p.world_size}")
    if scheduler_rank != p.rank:
        raise PlacementError(
            f"{rank_var}={scheduler_rank}, but node {p.group_rank} local rank {p.local_rank} "
            f"is rank {p.rank} in torch elastic's order: tasks are not placed in blocks of "
            f"consecutive ranks per node (use srun --distribution=block or "
            f"mpiexec --map-by slot)")
    return p


def from_slurm(env: Mapping[str, str]) -> Placement:
    """A task's placement from the variables ``srun`` sets in it."""
    counts_text = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
    if not counts_text:
        raise PlacementError("SLURM_STEP_TASKS_PER_NODE is not set (not inside srun?)")
    size_var = "SLURM_STEP_NUM_TASKS" if "SLURM_STEP_NUM_TASKS" in env else "SLURM_NTASKS"
    p = place(parse_slurm_tasks_per_node(counts_text), _int(env, "SLURM_NODEID"),
              _int(env, "SLURM_LOCALID"), env.get("SLURMD_NODENAME"))
    return _checked(p, _int(env, "SLURM_PROCID"), _int(env, size_var), "SLURM_PROCID")


def _from_mpi(env: Mapping[str, str], rank_var: str, size_var: str, local_var: str,
              local_size_var: str) -> Placement:
    rank, size = _int(env, rank_var), _int(env, size_var)
    local, local_size = _int(env, local_var), _int(env, local_size_var)
    if env.get(TASKS_PER_NODE_VAR):
        counts = parse_tasks_per_node(env[TASKS_PER_NODE_VAR])
    elif local_size > 0 and size % local_size == 0:
        counts = [local_size] * (size // local_size)  # the same on every node: the usual case
    else:
        raise PlacementError(f"{size} tasks with {local_size} on this node: set "
                             f"{TASKS_PER_NODE_VAR} to the tasks of each node")
    bases = node_bases(_check_counts(counts))
    if not 0 <= rank < sum(counts):
        raise PlacementError(f"{rank_var}={rank} outside tasks per node {counts}")
    node = bisect_right(bases, rank) - 1
    p = place(counts, node, rank - bases[node])
    if (p.local_rank, p.local_world_size) != (local, local_size):
        raise PlacementError(
            f"{rank_var}={rank} has {local_var}={local} of {local_size_var}={local_size}, but "
            f"tasks per node {counts} in blocks make it local rank {p.local_rank} of "
            f"{p.local_world_size}: tasks are not placed in blocks (use mpiexec --map-by slot)")
    return _checked(p, rank, size, rank_var)


def from_openmpi(env: Mapping[str, str]) -> Placement:
    """A process's placement from ``OMPI_COMM_WORLD_*`` (OpenMPI's mpiexec)."""
    return _from_mpi(env, "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
                     "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE")


def from_hydra(env: Mapping[str, str]) -> Placement:
    """A process's placement from MPICH's hydra (``PMI_RANK``, ``MPI_LOCALRANKID``, ...)."""
    return _from_mpi(env, "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS")


def from_scheduler(env: Mapping[str, str]) -> Placement:
    """Whichever launcher started this process; the innermost (MPI inside srun) wins."""
    if "OMPI_COMM_WORLD_RANK" in env:
        return from_openmpi(env)
    if "PMI_RANK" in env and "MPI_LOCALRANKID" in env:
        return from_hydra(env)
    if "SLURM_PROCID" in env and "SLURM_STEP_ID" in env:
        return from_slurm(env)
    raise PlacementError("not started by srun or mpiexec: no SLURM_PROCID, "
                         "OMPI_COMM_WORLD_RANK or PMI_RANK in the environment")


def torchrun_env(p: Placement, run_id: str, *, role: str = DEFAULT_ROLE,
                 restart_count: int = 0, max_restarts: int = 0) -> dict[str, str]:
    """The variables torch elastic's agent gives this worker (one role, no agent store)."""
    return {
        "RANK": str(p.rank),
        "WORLD_SIZE": str(p.world_size),
        "LOCAL_RANK": str(p.local_rank),
        "LOCAL_WORLD_SIZE": str(p.local_world_size),
        "GROUP_RANK": str(p.group_rank),
        "GROUP_WORLD_SIZE": str(p.group_world_size),
        "ROLE_RANK": str(p.rank),
        "ROLE_WORLD_SIZE": str(p.world_size),
        "ROLE_NAME": role,
        "TORCHELASTIC_RUN_ID": run_id,
        "TORCHELASTIC_RESTART_COUNT": str(restart_count),
        "TORCHELASTIC_MAX_RESTARTS": str(max_restarts),
    }


def torchrun_env_from_scheduler(env: Mapping[str, str], run_id: str, *,
                                role: str = DEFAULT_ROLE, restart_count: int = 0,
                                max_restarts: int = 0) -> dict[str, str]:
    """``torchrun_env(from_scheduler(env), ...)``: what a rank sets on itself at start."""
    return torchrun_env(from_scheduler(env), run_id, role=role, restart_count=restart_count,
                        max_restarts=max_restarts)
