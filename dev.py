#!/usr/bin/env python3
"""Set up everything and run the main job or the tests. Needs only Python 3.10+ and pip.

    python3 dev.py demo    # venv, install, 4-rank notebook with live output in the terminal
    python3 dev.py test    # venv, install, ruff, the test suite
    python3 dev.py bench   # venv, install (+ bench peers), benchmark table

The venv lives in .venv and is reused; dependencies are reinstalled only when
pyproject.toml or this file changes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PY = VENV / "bin" / "python"
# The CPU build keeps the test/demo set-up small; the package itself leaves torch to the user.
TORCH_PIN = "torch==2.13.0"
STAMP = VENV / ".nbdist-installed"
#: Debian packages the scheduler tests run for real (tests/clusters); they skip without them.
SYSTEM_PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge", "openmpi-bin")


def sh(*cmd: str | Path, **kw: object) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT, **kw)  # type: ignore[arg-type]


def setup(extra: tuple[str, ...] = ()) -> None:
    if not PY.exists():
        sh(sys.executable, "-m", "venv", VENV)
    wanted = hashlib.sha256(
        (ROOT / "pyproject.toml").read_bytes() + Path(__file__).read_bytes()
        + " ".join(extra).encode()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    sh(PY, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    sh(PY, "-m", "pip", "install", "--quiet", "-e", ".[test]", TORCH_PIN, *extra)
    STAMP.write_text(wanted)


def _missing_packages() -> list[str]:
    missing = []
    for pkg in SYSTEM_PACKAGES:
        res = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg],
                             capture_output=True, text=True)
        if res.returncode != 0 or "install ok installed" not in res.stdout:
            missing.append(pkg)
    return missing


def _apt(*args: str) -> None:
    """apt-get, waiting for another apt/dpkg (another engineer's install) to let go."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "-o", "DPkg::Lock::Timeout=600", *args]
    for attempt in range(10):
        print("+", " ".join(cmd), flush=True)
        if subprocess.run(cmd, env=env).returncode == 0:
            return
        time.sleep(min(2 ** attempt, 30))  # back off: lists lock held, mirror hiccup
    raise SystemExit(f"{' '.join(cmd)} kept failing")


def install_system_packages() -> None:
    """SLURM, munge and OpenMPI from Debian, once; skipped where installed or not possible."""
    if os.environ.get("NBDIST_NO_APT") or not shutil.which("dpkg-query"):
        return
    missing = _missing_packages()
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        print(f"note: {' '.join(missing)} not installed (needs root and apt-get);"
              " the SLURM/MPI tests will be skipped", flush=True)
        return
    _apt("update", "-q")
    _apt("install", "-y", "-q", *missing)


def demo() -> int:
    setup()
    notebook = ROOT / "examples" / "allreduce.ipynb"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.call([str(VENV / "bin" / "nbdist"), "run", str(notebook), "--nproc", "4",
                            "--output", str(ROOT / "examples" / "allreduce.out.ipynb")],
                           cwd=ROOT, env=env)


def test(args: list[str]) -> int:
    install_system_packages()
    setup()
    sh(PY, "-m", "ruff", "check", "nbdist_provisioner", "tests", "bench", "dev.py")
    return subprocess.call([str(PY), "-m", "pytest", "-q", *args], cwd=ROOT)


def bench(args: list[str]) -> int:
    setup(("-r", str(ROOT / "bench" / "requirements.txt")))
    return subprocess.call([str(PY), "-m", "bench", *args], cwd=ROOT)


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("demo", "test", "bench"):
        print(__doc__)
        return 2
    cmd, rest = sys.argv[1], sys.argv[2:]
    if cmd == "demo":
        return demo()
    if cmd == "test":
        return test(rest)
    return bench(rest)


if __name__ == "__main__":
    sys.exit(main())
