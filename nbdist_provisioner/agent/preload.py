"""Import once what every rank imports, so forked ranks do not pay for it N times.

A fork copies the agent: every module it imported is there in the rank at no
cost, and its pages stay shared between ranks until written (``gc.freeze`` keeps
the garbage collector from writing to them). That is only safe while the agent
has **one thread and no CUDA context**: a thread holding a lock at the fork
leaves that lock held forever in the child, and a CUDA context cannot be used
after a fork. So the agent imports modules and nothing more (it never calls
``torch.cuda``), and checks its thread count before forking; if anything started
a thread, ranks are started by exec instead and the reason is reported.
"""

from __future__ import annotations

import gc
import importlib
import os

#: What an ipykernel rank imports before its first cell.
KERNEL_MODULES = (
    "zmq", "tornado.ioloop", "jupyter_client.session", "IPython", "ipykernel.kernelapp",
    "ipykernel.ipkernel", "ipykernel.zmqshell", "comm",
    "nbdist_provisioner.rank.kernel_main", "nbdist_provisioner.rank.extension",
    "nbdist_provisioner.rank.iostream", "nbdist_provisioner.rank.stream_stamps",
    "nbdist_provisioner.rank.distributed", "nbdist_provisioner.rank.execution_count",
    "nbdist_provisioner.rank.control", "nbdist_provisioner.rank.process_group",
    "nbdist_provisioner.rank.nested", "nbdist_provisioner.rank.threads",
    "nbdist_provisioner.rank.lean",
)
TORCH_MODULES = ("torch", "torch.distributed")


def thread_count() -> int:
    """Threads of this process, native ones included (Python's count misses those)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        import threading

        return threading.active_count()


def preload(torch: bool) -> tuple[bool, str]:
    """Import the modules ranks need; (fork is safe, why not)."""
    failed = []
    for name in KERNEL_MODULES + (TORCH_MODULES if torch else ()):
        try:
            importlib.import_module(name)
        except Exception as err:  # a rank will meet (and report) the same error
            failed.append(f"{name}: {type(err).__name__}: {err}")
    gc.collect()
    gc.freeze()
    threads = thread_count()
    if threads != 1:
        return False, (f"{threads} threads were running after the imports "
                       f"(forking then is unsafe); ranks are started by exec")
    torch_module = __import__("sys").modules.get("torch")
    if torch_module is not None and torch_module.cuda.is_initialized():
        return False, "CUDA was initialised by an import; ranks are started by exec"
    if failed:
        return True, "some imports failed (ranks will report them): " + "; ".join(failed)
    return True, ""
