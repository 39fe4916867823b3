"""The environment of the ranks: what all of them share, and what each one gets.

Nothing secret is here (keys travel in the rank's record, see ``rank.config``):
environments are readable by other users of the machine (``/proc/<pid>/environ``,
a scheduler's job view).
"""

from __future__ import annotations

import os
import secrets

from ...launchers.environment import local_rank_environment
from ...settings import SETTINGS_ENV, KernelSettings

#: Variables of the multiplexer's own that ranks must not inherit.
_NOT_FOR_RANKS = (SETTINGS_ENV, "JPY_PARENT_PID")


def shared_env(settings: KernelSettings, local: bool) -> dict[str, str]:
    """What every rank (and the agent that forks them) runs with."""
    env = {k: v for k, v in os.environ.items() if k not in _NOT_FOR_RANKS}
    env.update(settings.env)
    env.setdefault("OMP_NUM_THREADS", "1")  # as torchrun (also for the agent's imports)
    # debugpy's start-up notes would fill a dead rank's stderr tail
    env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    if local:
        # torch's own traffic between ranks on one host stays on loopback
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
        env.setdefault("NCCL_SOCKET_IFNAME", "lo")
    return env


def rank_env(shared: dict[str, str], rank: int, nproc: int, master_addr: str,
             master_port: int, run_id: str) -> dict[str, str]:
    """One rank's environment: the shared one plus the whole set torchrun gives a worker
    (frameworks detect an external launch from it)."""
    env = dict(shared)
    env.update(local_rank_environment(rank, nproc, master_addr, master_port, run_id, shared))
    return env


def new_run_id() -> str:
    return secrets.token_hex(8)
