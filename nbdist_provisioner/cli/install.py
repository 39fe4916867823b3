"""``nbdist install``: write a kernelspec that uses the multi-rank provisioner."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from importlib.resources import files
from pathlib import Path
from typing import Any

from ..kernelspecs import SIZED_DISPLAY_NAME, TEMPLATE_KEY, UNSIZED_DISPLAY_NAME
from ..settings import BACKENDS, MAX_NPROC, SettingsError, declared, parse_env_value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number of ranks, got {text!r}") from None
    if not 1 <= value <= MAX_NPROC:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_NPROC}, got {value}")
    return value


def setting_pair(text: str) -> tuple[str, Any]:
    """``NAME=VALUE`` of a declared setting, the value read as its ``NBDIST_*`` would be."""
    name, sep, raw = text.partition("=")
    fields = {f.name: f for f in declared()}
    if not sep or name not in fields:
        raise argparse.ArgumentTypeError(
            f"expected NAME=VALUE with NAME one of {', '.join(fields)}, got {text!r}")
    try:
        return name, parse_env_value(name, raw, fields[name].metadata["kind"])
    except SettingsError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def kernel_spec(nproc: int | None, display_name: str | None, python: str,
                config: dict[str, Any]) -> dict[str, Any]:
    """The kernel.json for ``nproc`` ranks, from the packaged template."""
    spec = json.loads(files("nbdist_provisioner").joinpath("kernelspec/kernel.json").read_text())
    spec["argv"][0] = python
    provisioner_config = dict(config)
    if nproc is not None:
        provisioner_config["nproc"] = nproc
    else:
        provisioner_config.pop("nproc", None)
        spec["metadata"]["kernel_provisioner"]["config"].pop("nproc", None)
    spec["metadata"]["kernel_provisioner"]["config"] = provisioner_config
    if display_name:
        spec["display_name"] = display_name
    elif nproc is not None:
        spec["display_name"] = f"Python 3 (multi-rank, {nproc} ranks)"
    else:
        # The count is resolved when the kernel starts (Jupyter config > NBDIST_NPROC >
        # default): the static name claims no count; MultiRankKernelSpecManager fills the
        # template from the same settings where the server enables it.
        spec["display_name"] = UNSIZED_DISPLAY_NAME
        spec["metadata"]["nbdist"] = {TEMPLATE_KEY: SIZED_DISPLAY_NAME}
    return spec


def copy_python_logos(dest: Path) -> None:
    """ipykernel's Python logos, so launchers show the kernel with a logo like python3's."""
    import shutil

    import ipykernel

    resources = Path(ipykernel.__file__).parent / "resources"
    for logo in ("logo-32x32.png", "logo-64x64.png", "logo-svg.svg"):
        if (resources / logo).is_file():
            shutil.copy(resources / logo, dest / logo)


def install(args: argparse.Namespace) -> int:
    from jupyter_client.kernelspec import KernelSpecManager

    config: dict[str, Any] = {}
    if args.backend:
        config["backend"] = args.backend
    if args.no_init_process_group:
        config["init_process_group"] = False
    if args.launcher:
        config["launcher"] = args.launcher
    config.update(dict(args.setting or ()))
    try:
        from ..settings import KernelSettings

        KernelSettings(**{"nproc": args.nproc or MAX_NPROC, **config})  # (checks them)
    except (SettingsError, TypeError) as err:
        print(f"nbdist install: {err}", file=sys.stderr)
        return 2
    spec = kernel_spec(args.nproc, args.display_name, args.python or sys.executable, config)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / args.name
        src.mkdir()
        (src / "kernel.json").write_text(json.dumps(spec, indent=1) + "\n")
        copy_python_logos(src)
        dest = KernelSpecManager().install_kernel_spec(
            str(src), kernel_name=args.name, user=args.user, prefix=args.prefix)
    print(f"Installed kernelspec {args.name!r} ({spec['display_name']}) in {dest}")
    return 0


def add_install_parser(sub: Any) -> None:
    p = sub.add_parser("install", help="install a multi-rank kernelspec",
                       description="Install a kernelspec whose kernel runs one IPython "
                                   "kernel per torch.distributed rank.")
    p.add_argument("--nproc", type=positive_int, default=None,
                   help="fix the number of ranks in kernel.json (default: resolved at each "
                        "start from c.MultiRankProvisioner.nproc, NBDIST_NPROC or 2)")
    p.add_argument("--name", default="multi-rank", help="kernelspec name (default: multi-rank)")
    p.add_argument("--display-name", default=None, help="name shown in the kernel picker")
    p.add_argument("--backend", choices=BACKENDS, default=None, help="torch.distributed backend")
    p.add_argument("--launcher", default=None,
                   help="how ranks start: local (default), slurm, mpi, or a plug-in's name")
    p.add_argument("--setting", action="append", type=setting_pair, metavar="NAME=VALUE",
                   help="any other setting for this kernelspec (repeatable), e.g. "
                        "--setting slurm_partition=gpu --setting nodes=2")
    p.add_argument("--no-init-process-group", action="store_true",
                   help="do not initialise torch.distributed on start (env vars only)")
    p.add_argument("--python", default=None,
                   help="interpreter that runs the kernel (default: this one)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="install for this user only")
    where.add_argument("--sys-prefix", action="store_const", dest="prefix", const=sys.prefix,
                       help=f"install into this Python's prefix ({sys.prefix})")
    where.add_argument("--prefix", default=None, help="install under PREFIX/share/jupyter/kernels")
    p.set_defaults(func=install)
