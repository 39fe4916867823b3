#!/usr/bin/env python3
"""Set up everything and run the main job or the tests. Needs only Python 3.10+ and pip.

    python3 dev.py demo    # venv, install, DDP training notebook on 4 ranks, live in the terminal
    python3 dev.py test    # venv, install, ruff, mypy on the request core, the test suite
    python3 dev.py bench   # venv, install (+ bench peers), benchmark table

The venv lives in .venv and is reused; dependencies are reinstalled only when
pyproject.toml or this file changes. `test` also makes sure of what the tests need
outside the venv, once: Debian's chromium (browser tests), slurmctld/slurmd/munge and
openmpi-bin (scheduler tests), with apt; configurable-http-proxy (JupyterHub test) with
npm into the ignored .node/ folder. NBDIST_NO_APT=1 skips the apt installs.
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
#: Debian packages the tests run for real (they skip without them): browser, schedulers.
SYSTEM_PACKAGES = ("chromium", "fonts-dejavu-core", "slurmctld", "slurmd", "slurm-client",
                   "munge", "openmpi-bin")
# configurable-http-proxy for the JupyterHub test, repo-local (not a global npm install).
NODE_DIR = ROOT / ".node"
CHP = NODE_DIR / "node_modules" / ".bin" / "configurable-http-proxy"
CHP_PIN = "configurable-http-proxy@5.3.0"


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


def missing_packages(packages: tuple[str, ...]) -> list[str]:
    missing = []
    for pkg in packages:
        res = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg],
                             capture_output=True, text=True)
        if res.returncode != 0 or "install ok installed" not in res.stdout:
            missing.append(pkg)
    return missing


def apt(*args: str) -> None:
    """apt-get, waiting for a dpkg lock another user of the machine holds."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "-o", "DPkg::Lock::Timeout=600", *args]
    for attempt in range(6):
        print("+", " ".join(cmd), flush=True)
        if subprocess.run(cmd, env=env).returncode == 0:
            return
        time.sleep(min(2 ** attempt, 30))  # back-off between retries, not a readiness wait
    raise SystemExit(f"{' '.join(cmd)} kept failing")


def setup_system() -> None:
    """What the tests need outside the venv; a no-op once present."""
    if not os.environ.get("NBDIST_NO_APT") and shutil.which("dpkg-query"):
        missing = missing_packages(SYSTEM_PACKAGES)
        if missing and os.geteuid() == 0 and shutil.which("apt-get"):
            apt("update", "-q")
            apt("install", "-y", "-q", "--no-install-recommends", *missing)
        elif missing:
            print(f"note: {' '.join(missing)} not installed (needs root and apt-get); "
                  "the tests that need them are skipped", flush=True)
    if not CHP.exists():
        if (not shutil.which("npm") and shutil.which("apt-get") and os.geteuid() == 0
                and not os.environ.get("NBDIST_NO_APT")):
            apt("install", "-y", "-q", "--no-install-recommends", "nodejs", "npm")
        if shutil.which("npm"):
            NODE_DIR.mkdir(exist_ok=True)
            sh("npm", "install", "--prefix", NODE_DIR, "--no-audit", "--no-fund",
               "--loglevel=error", CHP_PIN)
        else:
            print("note: npm missing; the JupyterHub test is skipped", flush=True)


def demo() -> int:
    setup()
    notebook = ROOT / "examples" / "train_digits.ipynb"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.call([str(VENV / "bin" / "nbdist"), "run", str(notebook), "--nproc", "4",
                            "--output", str(ROOT / "examples" / "train_digits.out.ipynb")],
                           cwd=ROOT, env=env)


def test(args: list[str]) -> int:
    setup_system()
    setup()
    sh(PY, "-m", "ruff", "check", "nbdist_provisioner", "tests", "bench", "dev.py")
    sh(PY, "-m", "mypy", "--strict", "nbdist_provisioner/mux/core")
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
