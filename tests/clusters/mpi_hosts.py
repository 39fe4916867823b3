"""Two emulated hosts for OpenMPI on this machine.

``mpiexec`` treats every name in ``--host`` that is not this machine as remote and
starts its ``orted`` there through ``plm_rsh_agent`` (ssh by default). Our agent runs
the command locally instead and exports ``NBDIST_TEST_HOST=<name>``, so a test can
tell which emulated host a rank landed on; where it may (root, ``unshare``), the command
also gets a UTS namespace of its own whose host name is ``<name>``, so what runs there
sees the host name a real host would have. Like ssh, it starts the command with a
fresh environment (``env -i``, only HOME and PATH), so only what ``mpiexec -x``
forwards reaches the ranks, as on real hosts. Only loopback interfaces are used.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

HOST_VAR = "NBDIST_TEST_HOST"
BINARIES = ("mpiexec", "orted")

_AGENT = """#!/bin/sh
# plm_rsh_agent for tests: called as "<agent> HOST COMMAND...", like ssh; runs it here,
# with a login-like environment as ssh would (nothing of mpiexec's leaks through).
host="$1"; shift
echo "$host $*" >> "{log}"
if [ "$(id -u)" = 0 ] && command -v unshare >/dev/null; then
  exec env -i HOME="$HOME" PATH="$PATH" LANG=C.UTF-8 {var}="$host" \
    unshare --uts /bin/sh -c "hostname \"$host\" && $*"
fi
exec env -i HOME="$HOME" PATH="$PATH" LANG=C.UTF-8 {var}="$host" /bin/sh -c "$*"
"""


def missing_binaries() -> list[str]:
    return [name for name in BINARIES if shutil.which(name) is None]


class EmulatedHosts:
    """Host names that all mean this machine, and the MCA settings that make that work."""

    def __init__(self, root: Path, hosts: Sequence[str] = ("nodeA", "nodeB")) -> None:
        self.hosts = tuple(hosts)
        self.agent = root / "rsh-agent.sh"
        self.agent_log = root / "rsh-agent.log"
        self.agent.write_text(_AGENT.format(log=self.agent_log, var=HOST_VAR))
        os.chmod(self.agent, 0o755)

    @property
    def mca(self) -> dict[str, str]:
        """``--mca`` settings: our agent, no tree spawn, loopback only for oob and btl."""
        return {
            "plm_rsh_agent": str(self.agent),
            "plm_rsh_no_tree_spawn": "1",
            "oob_tcp_if_include": "lo",
            "btl_tcp_if_include": "lo",
            "btl": "self,tcp",
        }

    def mpiexec_argv(self, slots_per_host: int, np: int | None = None) -> list[str]:
        """A base ``mpiexec`` command over every emulated host (root allowed, oversubscribe)."""
        argv = ["mpiexec", "--allow-run-as-root", "--oversubscribe",
                "--host", ",".join(f"{h}:{slots_per_host}" for h in self.hosts),
                "-np", str(np if np is not None else slots_per_host * len(self.hosts))]
        for key, value in self.mca.items():
            argv += ["--mca", key, value]
        return argv

    def agent_calls(self) -> list[str]:
        """One line per host the agent was asked to start a daemon on."""
        try:
            return self.agent_log.read_text().splitlines()
        except FileNotFoundError:
            return []
