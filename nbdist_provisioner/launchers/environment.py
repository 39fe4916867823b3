"""The environment ``torchrun`` gives each worker, computed for one rank.

Frameworks decide how they were launched from these variables alone:
``TORCHELASTIC_RUN_ID`` makes ``torch.distributed.is_torchelastic_launched()``
true, which is what Lightning's ``TorchElasticEnvironment`` and Accelerate
look for before trusting ``RANK``/``WORLD_SIZE`` instead of starting
processes of their own. So every rank gets the whole set, named and valued
as ``torch.distributed.elastic``'s local agent does, except
``TORCHELASTIC_USE_AGENT_STORE``: there is no agent, and ``True`` would make
rank 0 a client of a store nobody serves.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

#: torchrun's default role name (``--role``).
DEFAULT_ROLE = "default"
#: ``TORCH_NCCL_ASYNC_ERROR_HANDLING`` value: abort the communicators, raise, keep the process
NCCL_CLEAN_UP_ONLY = "2"


@dataclass(frozen=True)
class RankPlace:
    """Where one rank sits in the world: globally and on its node."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    #: the node's index (torchrun's ``--node-rank``) and the number of nodes
    group_rank: int = 0
    group_world_size: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside world of {self.world_size}")
        if not 0 <= self.local_rank < self.local_world_size:
            raise ValueError(
                f"local rank {self.local_rank} outside {self.local_world_size} local ranks")
        if not 0 <= self.group_rank < self.group_world_size:
            raise ValueError(f"group rank {self.group_rank} outside {self.group_world_size}")


def torchrun_environment(place: RankPlace, master_addr: str, master_port: int, run_id: str,
                         inherited: Mapping[str, str]) -> dict[str, str]:
    """The variables to set for one rank (the caller merges them over ``inherited``).

    ``inherited`` is the environment the rank would otherwise get; it decides
    the two values torchrun also takes from its own environment:
    ``OMP_NUM_THREADS`` (kept if set, else 1, torchrun's choice for more than
    one process) and ``TORCH_NCCL_ASYNC_ERROR_HANDLING`` (kept if set, else 2,
    "clean up only": a failed or timed-out NCCL collective aborts its
    communicators and raises in the cell. torchrun's 1 also kills the worker,
    which its agent then restarts; in a kernel that would lose every variable.)
    """
    if not run_id:
        raise ValueError("run_id must not be empty: it is how frameworks detect the launch")
    env = {
        "RANK": str(place.rank),
        "WORLD_SIZE": str(place.world_size),
        "LOCAL_RANK": str(place.local_rank),
        "LOCAL_WORLD_SIZE": str(place.local_world_size),
        "GROUP_RANK": str(place.group_rank),
        "GROUP_WORLD_SIZE": str(place.group_world_size),
        # one role for all ranks, as torchrun without --role
        "ROLE_NAME": DEFAULT_ROLE,
        "ROLE_RANK": str(place.rank),
        "ROLE_WORLD_SIZE": str(place.world_size),
        "MASTER_ADDR": master_addr,
        "MASTER_PORT": str(master_port),
        "TORCHELASTIC_RUN_ID": run_id,
        # ranks are never restarted one by one: a kernel restart is a new run
        "TORCHELASTIC_RESTART_COUNT": "0",
        "TORCHELASTIC_MAX_RESTARTS": "0",
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": inherited.get("TORCH_NCCL_ASYNC_ERROR_HANDLING",
                                                         NCCL_CLEAN_UP_ONLY),
        "OMP_NUM_THREADS": inherited.get("OMP_NUM_THREADS", "1"),
    }
    return env


def local_rank_environment(rank: int, nproc: int, master_addr: str, master_port: int,
                           run_id: str, inherited: Mapping[str, str]) -> dict[str, str]:
    """``torchrun --nproc-per-node nproc`` on one node: what the local launcher runs."""
    return torchrun_environment(RankPlace(rank, nproc, rank, nproc), master_addr, master_port,
                                run_id, inherited)
