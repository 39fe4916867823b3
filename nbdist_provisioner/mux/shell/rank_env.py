"""The environment of the ranks: what all of them share, and what each one gets.

Nothing secret is here (keys travel in the rank's record, see ``rank.config``):
environments are readable by other users of the machine (``/proc/<pid>/environ``,
a scheduler's job view).
"""

from __future__ import annotations

import os
import secrets

from ...settings import SETTINGS_ENV, KernelSettings

#: Variables of the multiplexer's own that ranks must not inherit.
_NOT_FOR_RANKS = (SETTINGS_ENV, "JPY_PARENT_PID")


def shared_env(settings: KernelSettings, local: bool) -> dict[str, str]:
    """What every rank (and the agent that forks them) runs with."""
    env = {k: v for k, v in os.environ.items() if k not in _NOT_FOR_RANKS}
    env.update(settings.env)
    env.setdefault("OMP_NUM_THREADS", "1")  # as torchrun
    # debugpy's start-up notes would fill a dead rank's stderr tail
    env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    if local:
        # torch's own traffic between ranks on one host stays on loopback
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
        env.setdefault("NCCL_SOCKET_IFNAME", "lo")
    return env


def rank_env(shared: dict[str, str], rank: int, nproc: int, master_addr: str,
             master_port: int, run_id: str) -> dict[str, str]:
    """One rank's environment: the shared one plus what torchrun sets."""
    env = dict(shared)
    env.update({
        "RANK": str(rank), "WORLD_SIZE": str(nproc),
        "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(nproc),
        "GROUP_RANK": "0", "ROLE_RANK": str(rank), "ROLE_WORLD_SIZE": str(nproc),
        "MASTER_ADDR": master_addr, "MASTER_PORT": str(master_port),
        "TORCHELASTIC_RUN_ID": run_id,
    })
    return env


def new_run_id() -> str:
    return secrets.token_hex(8)
