"""``nbdist run NOTEBOOK``: execute a notebook on the multi-rank kernel, headless.

Output is echoed to the terminal as it arrives (rank-labelled, like torchrun;
live progress redrawn in place on a terminal, see ``terminal``), and the executed
notebook is written out, as nbclient / papermill would, with the kernelspec it ran
on in its metadata. The kernel: ``--kernel``, else ``--nproc`` ranks, else the
notebook's own ``metadata.kernelspec.name``, else 4 ranks.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .install import kernel_spec, positive_int
from .terminal import TerminalView

RUN_KERNEL_NAME = "nbdist-run"
DEFAULT_NPROC = 4


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
        """A NotebookClient that also shows every output in the terminal as it comes."""

        view: TerminalView

        def process_message(self, msg: dict[str, Any], cell: Any, cell_index: int) -> Any:
            self.view.message(msg)
            return super().process_message(msg, cell, cell_index)

    return TerminalEchoClient


def choose_kernel(args: argparse.Namespace, nb: Any) -> tuple[str, int | None]:
    """(kernelspec name, ranks of an in-memory spec or None): ``--kernel``, ``--nproc``, the
    notebook's own kernelspec, or DEFAULT_NPROC ranks."""
    if args.kernel:
        return args.kernel, None
    if args.nproc:
        return RUN_KERNEL_NAME, args.nproc
    name = ((nb.metadata.get("kernelspec") or {}).get("name") or "").strip()
    if name:
        return name, None
    return RUN_KERNEL_NAME, DEFAULT_NPROC


def run(args: argparse.Namespace) -> int:
    src = Path(args.notebook)
    if not src.is_file():  # before the imports below, which take a second
        print(f"nbdist run: no such notebook: {src}", file=sys.stderr)
        return 2

    import nbformat
    from jupyter_client.kernelspec import NoSuchKernel
    from jupyter_client.manager import AsyncKernelManager
    from jupyter_core.utils import run_sync
    from nbclient.exceptions import CellExecutionError, DeadKernelError

    nb = nbformat.read(src, as_version=4)
    out_path = Path(args.output) if args.output else src.with_name(src.stem + ".out.ipynb")
    name, nproc = choose_kernel(args, nb)
    if nproc is None:
        km = AsyncKernelManager(kernel_name=name)
        try:
            used = km.kernel_spec
        except NoSuchKernel:
            print(f"nbdist run: no kernelspec {name!r} (the notebook's, or --kernel); "
                  f"install it, or pass --kernel NAME or --nproc N", file=sys.stderr)
            return 2
    else:
        spec = kernel_spec(nproc, None, sys.executable, {})
        km = AsyncKernelManager(kernel_name=name, kernel_spec_manager=_make_spec_manager(spec))
        used = km.kernel_spec
    print(f"[nbdist] running {src} on {used.display_name} (kernelspec {name})",
          file=sys.stderr, flush=True)
    client = _make_client_class()(nb, km=km, resources={"metadata": {"path": str(src.parent)}})
    client.view = TerminalView.for_terminal(sys.stdout, sys.stderr)
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
        client.view.cell_done()
        if km.has_kernel:
            run_sync(km.shutdown_kernel)(now=False)
        nb.metadata["kernelspec"] = {"name": name, "display_name": used.display_name,
                                     "language": used.language or "python"}
        if nproc is not None:
            nb.metadata.setdefault("nbdist", {})["nproc"] = nproc
        nbformat.write(nb, out_path)
        print(f"[nbdist] wrote {out_path}", file=sys.stderr)
    return status


def add_run_parser(sub: Any) -> None:
    p = sub.add_parser("run", help="execute a notebook on a multi-rank kernel",
                       description="Execute NOTEBOOK headless on a multi-rank kernel, echoing "
                                   "rank-labelled output as it arrives.")
    p.add_argument("notebook")
    p.add_argument("--nproc", type=positive_int, default=None,
                   help="run on this many ranks (default: the notebook's kernelspec, else "
                        f"{DEFAULT_NPROC})")
    p.add_argument("--kernel", default=None,
                   help="use this installed kernelspec (default: the notebook's)")
    p.add_argument("--output", "-o", default=None,
                   help="where to write the executed notebook (default NOTEBOOK.out.ipynb)")
    p.set_defaults(func=run)
