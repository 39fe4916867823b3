#!/usr/bin/env python3
"""Set up everything and run the main job or the tests. Needs only Python 3.10+ and pip.

    python3 dev.py demo    # venv, install, DDP training notebook on 4 ranks, live in the terminal
    python3 dev.py test    # venv, install, ruff, the test suite
    python3 dev.py bench   # venv, install (+ bench peers), benchmark table

The venv lives in .venv and is reused; dependencies are reinstalled only when
pyproject.toml or this file changes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PY = VENV / "bin" / "python"
# The CPU build keeps the test/demo set-up small; the package itself leaves torch to the user.
TORCH_PIN = "torch==2.13.0"
STAMP = VENV / ".nbdist-installed"


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


def demo() -> int:
    setup()
    notebook = ROOT / "examples" / "train_digits.ipynb"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.call([str(VENV / "bin" / "nbdist"), "run", str(notebook), "--nproc", "4",
                            "--output", str(ROOT / "examples" / "train_digits.out.ipynb")],
                           cwd=ROOT, env=env)


def test(args: list[str]) -> int:
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
