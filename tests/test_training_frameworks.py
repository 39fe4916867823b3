"""Real training with Lightning, Accelerate and plain DDP inside a 2-rank kernel, unpatched.

Each run is also made with torchrun on the same script (tests/train_digits.py):
the parameters at the end must be identical on every rank and equal to
torchrun's, bit for bit.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from kernel_harness import printed_by, run_cell

TESTS = Path(__file__).resolve().parent
RUNS = ("plain_ddp", "lightning_fit", "accelerate_loop")


@pytest.fixture(scope="module")
def kernel(start_module_kernel, kernel_prefix):
    from fault_harness import install_spec

    rk = start_module_kernel(install_spec(kernel_prefix, "nbdist-train-2", 2, backend="gloo"))
    run = run_cell(rk.kc, f"import sys\nsys.path.insert(0, {str(TESTS)!r})\nimport train_digits")
    assert run.status == "ok", run.reply["content"]
    return rk


def digests(text: str) -> dict[int, str]:
    return {int(rank): value for rank, value in re.findall(r"DIGEST (\d+) (\w+)", text)}


def torchrun_digests(run: str, out: Path) -> dict[int, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         str(TESTS / "train_digits.py"), run, str(out)],
        capture_output=True, text=True, timeout=600, cwd=TESTS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {rank: (out / f"digest-{rank}").read_text() for rank in (0, 1)}


@pytest.mark.slow
@pytest.mark.parametrize("name", RUNS)
def test_same_parameters_as_torchrun(kernel, name: str, tmp_path: Path) -> None:
    run = run_cell(kernel.kc, f"print('DIGEST', rank, train_digits.{name}())", timeout=600)
    assert run.status == "ok", run.reply["content"]
    in_kernel = digests(run.stream_text())
    assert set(in_kernel) == {0, 1}, run.stream_text()
    assert in_kernel[0] == in_kernel[1], "ranks ended with different parameters"
    assert torchrun_digests(name, tmp_path) == in_kernel


@pytest.mark.slow
def test_end_training_then_dist_init(kernel) -> None:
    """accelerator.end_training() destroys the group; %dist_init brings it back for the
    same Accelerator state, without restarting the ranks."""
    run = run_cell(kernel.kc, "from accelerate import Accelerator\n"
                              "acc = Accelerator(cpu=True)\nacc.end_training()")
    assert run.status == "ok", run.reply["content"]
    assert "this cell destroyed the process group; run %dist_init" in run.stream_text("stderr")
    status = run_cell(kernel.kc, "%dist_status").stream_text()
    assert printed_by(status, "process group destroyed") == 2, status
    run = run_cell(kernel.kc, "%dist_init")
    assert run.status == "ok", run.reply["content"]
    assert printed_by(run.stream_text(), "process group initialised: healthy") == 2
    run = run_cell(kernel.kc, "print('SUM', Accelerator(cpu=True).reduce("
                              "torch.tensor(1.0), 'sum').item())\n%dist_init")
    assert run.status == "ok", run.reply["content"]
    assert printed_by(run.stream_text(), "SUM 2.0") == 2
    assert printed_by(run.stream_text(), "already initialised; nothing done") == 2


NESTED = {
    "mp.spawn": "import torch.multiprocessing as mp\nmp.spawn(print, nprocs=2)",
    # as in a fresh notebook: accelerate refuses by itself once an Accelerator exists
    "notebook_launcher": "from accelerate.state import AcceleratorState\n"
                         "AcceleratorState._reset_state(reset_partial_state=True)\n"
                         "from accelerate import notebook_launcher\n"
                         "notebook_launcher(print, num_processes=2)",
    "ddp_notebook": "import lightning as L\n"
                    "from lightning.pytorch.demos.boring_classes import BoringModel\n"
                    "L.Trainer(strategy='ddp_notebook', devices=2, accelerator='cpu', "
                    "max_epochs=1, logger=False, enable_checkpointing=False).fit(BoringModel())",
}


@pytest.mark.slow
@pytest.mark.parametrize("launcher", NESTED)
def test_nested_world_is_refused_at_once(kernel, launcher: str) -> None:
    run = run_cell(kernel.kc, NESTED[launcher], timeout=600)
    assert run.status == "error"
    assert run.reply["content"]["ename"] == "NestedWorldError"
    assert run.reply["content"]["nbdist"]["failed_ranks"] == [0, 1]
    assert "not starting a distributed world inside rank" in run.reply["content"]["evalue"]
    # nothing was started and the world is intact
    run = run_cell(kernel.kc, "t = torch.ones(1)\ndist.all_reduce(t)\nprint('SUM', t.item())\n"
                              "import multiprocessing as mp\n"
                              "print('KIDS', len(mp.active_children()))")
    assert printed_by(run.stream_text(), "SUM 2.0") == 2
    assert printed_by(run.stream_text(), "KIDS 0") == 2


@pytest.mark.slow
def test_dataloader_workers_still_work(kernel) -> None:
    """The nested-world guard leaves ordinary worker processes alone."""
    run = run_cell(kernel.kc, "from torch.utils.data import DataLoader\n"
                              "n = sum(len(b[0]) for b in DataLoader(train_digits.digits(), "
                              "batch_size=100, num_workers=2))\nprint('N', n)")
    assert run.status == "ok", run.reply["content"]
    assert printed_by(run.stream_text(), "N 1797") == 2


@pytest.mark.slow
def test_demo_notebook_trains(tmp_path: Path) -> None:
    """The README's main job, through the real CLI (2 ranks here to spare the CI's cores)."""
    import json

    out = tmp_path / "executed.ipynb"
    proc = subprocess.run(
        [sys.executable, "-m", "nbdist_provisioner.cli", "run",
         str(TESTS.parent / "examples" / "train_digits.ipynb"), "--nproc", "2",
         "--output", str(out)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert printed_by(proc.stdout, "checkpoint loaded, identical to the trained weights: True") == 2
    losses = [float(x) for x in re.findall(r"training loss (\d+\.\d+)", proc.stdout)]
    assert len(losses) == 12 and losses[-1] < losses[0] / 5, losses
    last = json.loads(out.read_text())["cells"][-1]["outputs"][-1]
    accuracy = float(re.search(r"test accuracy (\d+\.\d)%", "".join(last["data"]["text/plain"]))[1])
    assert accuracy > 90, last
