#!/usr/bin/env python3
"""Set up everything and run the main job or the tests. Needs only Python 3.10+ and pip.

    python3 dev.py demo    # venv, install, DDP training notebook on 4 ranks, live in the terminal
    python3 dev.py test    # venv, install, ruff, mypy on the request core, the test suite
    python3 dev.py bench   # venv, install (+ bench peers), benchmark table

The venv lives in .venv and is reused; dependencies are reinstalled only when
pyproject.toml or this file changes. `test` also makes sure of what the browser and
JupyterHub tests need outside the venv: Debian's chromium (apt) and
configurable-http-proxy (npm, into the ignored .node/ folder).
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
# Browser tests launch Debian's chromium (Playwright's own browser download is not used).
CHROMIUM = Path("/usr/bin/chromium")
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


def apt_install(*packages: str) -> None:
    """apt-get update + install, waiting for a dpkg lock another user of the machine holds."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    wait = ("-o", "DPkg::Lock::Timeout=600")
    for attempt in range(1, 6):
        try:
            sh("apt-get", *wait, "update", "-q", env=env)
            sh("apt-get", *wait, "install", "-y", "-q", "--no-install-recommends", *packages,
               env=env)
            return
        except subprocess.CalledProcessError:
            if attempt == 5:
                raise
            print(f"apt-get failed (attempt {attempt}); retrying", flush=True)
            time.sleep(10 * attempt)  # back-off between retries, not a readiness wait


def setup_frontends() -> None:
    """Chromium and configurable-http-proxy for tests/frontends; a no-op once present."""
    if not CHROMIUM.exists():
        if shutil.which("apt-get") and os.geteuid() == 0:
            apt_install("chromium", "fonts-dejavu-core")
        else:
            print(f"warning: {CHROMIUM} missing and apt-get unusable here; "
                  "the browser tests will be skipped", flush=True)
    if not CHP.exists():
        if not shutil.which("npm") and shutil.which("apt-get") and os.geteuid() == 0:
            apt_install("nodejs", "npm")
        if shutil.which("npm"):
            NODE_DIR.mkdir(exist_ok=True)
            sh("npm", "install", "--prefix", NODE_DIR, "--no-audit", "--no-fund",
               "--loglevel=error", CHP_PIN)
        else:
            print("warning: npm missing; the JupyterHub test will be skipped", flush=True)


def demo() -> int:
    setup()
    notebook = ROOT / "examples" / "train_digits.ipynb"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.call([str(VENV / "bin" / "nbdist"), "run", str(notebook), "--nproc", "4",
                            "--output", str(ROOT / "examples" / "train_digits.out.ipynb")],
                           cwd=ROOT, env=env)


def test(args: list[str]) -> int:
    setup()
    setup_frontends()
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
