"""``nbdist run NOTEBOOK``: execute a notebook on the multi-rank kernel, headless.

Output is echoed to the terminal as it arrives (rank-labelled, like torchrun),
and the executed notebook is written out, as nbclient / papermill would.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .install import kernel_spec, positive_int

RUN_KERNEL_NAME = "nbdist-run"


def _make_spec_manager(spec: dict[str, Any]) -> Any:
    from jupyter_client.kernelspec import KernelSpec, KernelSpecManager

    class OneSpecManager(KernelSpecManager):
        """Serves the one in-memory spec of this run, so no install is needed."""

        def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
            if kernel_name == RUN_KERNEL_NAME:
                return KernelSpec(resource_dir="", **spec)
            return super().get_kernel_spec(kernel_name)

    return OneSpecManager()


def _make_client_class() -> Any:
    from nbclient import NotebookClient

    class TerminalEchoClient(NotebookClient):
        """A NotebookClient that also writes every output to the terminal as it comes."""

        def process_message(self, msg: dict[str, Any], cell: Any, cell_index: int) -> Any:
            echo_to_terminal(msg)
            return super().process_message(msg, cell, cell_index)

    return TerminalEchoClient


def echo_to_terminal(msg: dict[str, Any]) -> None:
    msg_type, content = msg["msg_type"], msg["content"]
    if msg_type == "stream":
        out = sys.stderr if content.get("name") == "stderr" else sys.stdout
        out.write(content.get("text", ""))
        out.flush()
    elif msg_type in ("execute_result", "display_data"):
        if (content.get("metadata") or {}).get("nbdist", {}).get("progress"):
            return  # live progress is for notebooks; finished bars arrive as lines
        text = (content.get("data") or {}).get("text/plain")
        if text:
            print(text, flush=True)
    elif msg_type == "error":
        print("\n".join(content.get("traceback") or [f"{content.get('ename')}: "
                                                      f"{content.get('evalue')}"]),
              file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    src = Path(args.notebook)
    if not src.is_file():  # before the imports below, which take a second
        print(f"nbdist run: no such notebook: {src}", file=sys.stderr)
        return 2

    import nbformat
    from jupyter_client.manager import AsyncKernelManager
    from jupyter_core.utils import run_sync
    from nbclient.exceptions import CellExecutionError, DeadKernelError

    nb = nbformat.read(src, as_version=4)
    out_path = Path(args.output) if args.output else src.with_name(src.stem + ".out.ipynb")
    if args.kernel:
        km = AsyncKernelManager(kernel_name=args.kernel)
    else:
        spec = kernel_spec(args.nproc, None, sys.executable, {})
        km = AsyncKernelManager(kernel_name=RUN_KERNEL_NAME,
                                kernel_spec_manager=_make_spec_manager(spec))
    client = _make_client_class()(nb, km=km, resources={"metadata": {"path": str(src.parent)}})
    status = 0
    try:
        client.execute()
    except CellExecutionError:
        status = 1  # the traceback was already echoed as it happened
    except DeadKernelError as err:
        print(f"nbdist run: the kernel died: {err}", file=sys.stderr)
        status = 1
    finally:
        # nbclient leaves a kernel manager it was handed running: stop it ourselves.
        if km.has_kernel:
            run_sync(km.shutdown_kernel)(now=False)
        nbformat.write(nb, out_path)
        print(f"[nbdist] wrote {out_path}", file=sys.stderr)
    return status


def add_run_parser(sub: Any) -> None:
    p = sub.add_parser("run", help="execute a notebook on a multi-rank kernel",
                       description="Execute NOTEBOOK headless on a multi-rank kernel, echoing "
                                   "rank-labelled output as it arrives.")
    p.add_argument("notebook")
    p.add_argument("--nproc", type=positive_int, default=4, help="number of ranks (default 4)")
    p.add_argument("--kernel", default=None,
                   help="use this installed kernelspec instead of --nproc")
    p.add_argument("--output", "-o", default=None,
                   help="where to write the executed notebook (default NOTEBOOK.out.ipynb)")
    p.set_defaults(func=run)
