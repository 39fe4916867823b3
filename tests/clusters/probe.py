"""What a rank sees: run under srun/mpiexec, prints one JSON line with its identity.

argv: --out DIR [--stdin] [--placement] [--fail RANK:CODE] [--sleep SECONDS].
CODE is an exit status, or -N to kill itself with signal N. The report goes to
DIR/<pid>.json, not stdout: a scheduler may split long lines of several ranks.
With --stdin it reads stdin to EOF and reports its sha256, so tests can check every
rank got the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

#: How tests run this probe as a rank.
ARGV = [sys.executable, os.path.abspath(__file__)]
PREFIXES = ("SLURM", "OMPI_COMM_WORLD", "NBDIST", "PMI_", "MPI_LOCAL")


def read_reports(out: str | os.PathLike[str]) -> list[dict]:
    """Every report written to ``out``, in no particular order."""
    return [json.loads(p.read_text()) for p in Path(out).glob("*.json")]


def main(argv: list[str]) -> None:
    report: dict[str, object] = {
        "pid": os.getpid(), "ppid": os.getppid(), "pgid": os.getpgid(0),
        "env": {k: v for k, v in os.environ.items() if k.startswith(PREFIXES)},
    }
    if "--stdin" in argv:
        data = sys.stdin.buffer.read()
        report["stdin_sha256"] = hashlib.sha256(data).hexdigest()
        report["stdin_len"] = len(data)
    if "--placement" in argv:
        from nbdist_provisioner.launchers.placement import torchrun_env_from_scheduler
        report["torchrun"] = torchrun_env_from_scheduler(os.environ, run_id="probe")
    out = argv[argv.index("--out") + 1]
    tmp = os.path.join(out, f".{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(report, f)
    os.replace(tmp, os.path.join(out, f"{os.getpid()}.json"))
    if "--fail" in argv:
        rank, code = (int(x) for x in argv[argv.index("--fail") + 1].split(":"))
        mine = int(os.environ.get("OMPI_COMM_WORLD_RANK") or os.environ["SLURM_PROCID"])
        if mine == rank:
            if code < 0:
                os.kill(os.getpid(), -code)
            sys.exit(code)
    if "--sleep" in argv:
        time.sleep(float(argv[argv.index("--sleep") + 1]))


if __name__ == "__main__":
    main(sys.argv[1:])
