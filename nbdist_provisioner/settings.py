"""The settings of one multi-rank kernel start, each declared once.

Every setting is one field of ``KernelSettings`` (name, type, default, help,
check); from these declarations come the provisioner's traitlets
(``c.MultiRankProvisioner.<name>``), the ``NBDIST_<NAME>`` environment
variables that give their defaults, the JSON record the multiplexer receives,
and the README's settings table (``settings_table()``, checked by a test).

Precedence, resolved by the provisioner: kernel.json
``metadata.kernel_provisioner.config`` > Jupyter config > ``NBDIST_*`` > default.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import Field, asdict, dataclass, field, fields
from typing import Any

from .rankset import RankSetError, parse_rank_set

#: The environment variable carrying the JSON settings to the multiplexer.
SETTINGS_ENV = "NBDIST_KERNEL_SETTINGS"
ENV_PREFIX = "NBDIST_"

BACKENDS = ("auto", "gloo", "nccl")
MAX_NPROC = 1024


class SettingsError(ValueError):
    """A setting with a bad value; the message names the setting and what is accepted."""


Check = Callable[[Any, "KernelSettings"], None]


def setting(default: Any, help: str, check: Check | None = None, kind: type = str,
            choices: tuple[str, ...] = ()) -> Any:
    """Declare one setting: a dataclass field that carries its help text and check."""
    meta = {"help": help, "check": check, "kind": kind, "choices": choices}
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=meta)
    return field(default=default, metadata=meta)


# -- checks ----------------------------------------------------------------------------
def _integer(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SettingsError(f"{name} must be an integer, got {value!r}")


def _check_nproc(value: Any, _s: KernelSettings) -> None:
    _integer("nproc", value)
    if not 1 <= value <= MAX_NPROC:
        raise SettingsError(f"nproc must be between 1 and {MAX_NPROC}, got {value}")


def _check_launcher(value: Any, _s: KernelSettings) -> None:
    if not isinstance(value, str) or not value:
        raise SettingsError(f"launcher must be a launcher name, got {value!r}")


def _check_backend(value: Any, _s: KernelSettings) -> None:
    if value not in BACKENDS:
        raise SettingsError(f"backend must be one of {', '.join(BACKENDS)}, got {value!r}")


def _check_env(value: Any, _s: KernelSettings) -> None:
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise SettingsError(f"env must map names to string values, got {value!r}")


def _check_primary(value: Any, s: KernelSettings) -> None:
    _integer("primary_rank", value)
    if not 0 <= value < s.nproc:
        raise SettingsError(f"primary_rank must be a rank of this kernel (0-{s.nproc - 1}), "
                            f"got {value}")


def _check_debug_rank(value: Any, s: KernelSettings) -> None:
    _integer("debug_rank", value)
    if not -1 <= value < s.nproc:
        raise SettingsError(f"debug_rank must be -1 (the primary rank) or a rank of this "
                            f"kernel (0-{s.nproc - 1}), got {value}")


def _check_prefix(value: Any, _s: KernelSettings) -> None:
    try:
        value.format(rank=0, local_rank=0, host="h", world_size=1)
    except (KeyError, IndexError, ValueError, AttributeError) as err:
        raise SettingsError(
            f"stream_prefix {value!r} is not a valid template "
            f"(fields: {{rank}}, {{local_rank}}, {{host}}, {{world_size}}): {err}") from None


def _check_output_ranks(value: Any, s: KernelSettings) -> None:
    try:
        parse_rank_set(value, s.nproc)
    except RankSetError as err:
        raise SettingsError(f"output_ranks: {err}") from None


def _count(name: str, low: int, high: int = MAX_NPROC) -> Check:
    def check(value: Any, _s: KernelSettings) -> None:
        _integer(name, value)
        if not low <= value <= high:
            raise SettingsError(f"{name} must be between {low} and {high}, got {value}")
    return check


def _check_nodes(value: Any, s: KernelSettings) -> None:
    _count("nodes", 0)(value, s)
    if value > s.nproc:
        raise SettingsError(f"nodes={value} leaves nodes without a rank: there are "
                            f"{s.nproc} ranks (nproc)")


def _check_words(name: str) -> Check:
    def check(value: Any, _s: KernelSettings) -> None:
        import shlex

        try:
            shlex.split(value)
        except (ValueError, AttributeError) as err:
            raise SettingsError(f"{name} must be shell words, got {value!r}: {err}") from None
    return check


def _check_ports(value: Any, _s: KernelSettings) -> None:
    if value == "":
        return
    first, _, last = str(value).partition("-")
    try:
        lo, hi = int(first), int(last or first)
    except ValueError:
        lo, hi = 0, -1
    if not 1 <= lo <= hi <= 65535:
        raise SettingsError(f"cluster_ports must be a port range FIRST-LAST (or one port), "
                            f"got {value!r}")


def _check_mca(value: Any, _s: KernelSettings) -> None:
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise SettingsError(f"mpi_mca must map MCA parameter names to string values, "
                            f"got {value!r}")


def _seconds(name: str) -> Check:
    def check(value: Any, _s: KernelSettings) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise SettingsError(f"{name} must be a positive number of seconds, got {value!r}")
    return check


def _check_window(value: Any, _s: KernelSettings) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 10:
        raise SettingsError(f"merge_window must be a number of seconds from 0 to 10, "
                            f"got {value!r}")


@dataclass(frozen=True)
class KernelSettings:
    """Everything the multiplexer needs to start and serve N ranks."""

    nproc: int = setting(2, "Number of ranks (one IPython kernel each), 1-1024.",
                         _check_nproc, int)
    launcher: str = setting(
        "local", "How ranks are started: `local` (subprocesses on this host), `slurm` (an "
                 "`srun` step, in the allocation the kernel runs in or one of its own), `mpi` "
                 "(Open MPI's `mpiexec`), or a launcher registered in the "
                 "`nbdist_provisioner.launchers` entry-point group.",
        _check_launcher)
    backend: str = setting(
        "auto", "torch.distributed backend: `auto` (nccl when every rank has a GPU of its "
                "own, else gloo), `gloo` or `nccl`.", _check_backend, choices=BACKENDS)
    init_process_group: bool = setting(
        True, "Initialise torch.distributed on every rank before the first cell.", kind=bool)
    env: dict[str, str] = setting({}, "Extra environment variables for every rank "
                                      "(a JSON object in the environment variable).",
                                  _check_env, dict)
    primary_rank: int = setting(0, "The rank that answers completion, inspection and "
                                   "history requests.", _check_primary, int)
    debug_rank: int = setting(
        -1, "The rank JupyterLab's debugger debugs (breakpoints, call stack, variables); "
            "-1: the primary rank. `%debug_rank N` in a cell chooses another.",
        _check_debug_rank, int)
    stream_prefix: str = setting(
        "[rank {rank}] ", "Label put before every output line; fields `{rank}`, "
                          "`{local_rank}`, `{host}`, `{world_size}`; empty turns labels off.",
        _check_prefix)
    output_ranks: str = setting(
        "all", "Whose output is shown: `all`, or ranks like `0`, `0,2`, `1-3` (errors of "
               "every rank are always shown).", _check_output_ranks)
    merge_window: float = setting(
        0.1, "Seconds output is held so that a line every shown rank prints identically "
             "appears once, as `[ranks 0-3] …`, and the ranks' displays are gathered into "
             "one; nothing is held longer. `0` turns line merging off.", _check_window, float)
    collective_timeout: float = setting(
        300.0, "Seconds a torch.distributed collective may wait before it fails.",
        _seconds("collective_timeout"), float)
    start_timeout: float = setting(120.0, "Seconds all ranks get to start and report ready.",
                                   _seconds("start_timeout"), float)
    fail_fast: bool = setting(
        True, "When a rank fails while others wait in a collective (or some ranks wait in "
              "one the others never entered, or an interrupt finds ranks in one), end the "
              "collectives on every rank and make the process group again, keeping "
              "variables. Off: they wait for `collective_timeout` or an interrupt.",
        kind=bool)
    fork_server: bool = setting(
        True, "Start local ranks by forking them from one process that imported ipykernel "
              "(and torch) once: faster starts, less memory per rank. Off: each rank is a "
              "new interpreter.", kind=bool)
    # -- several nodes (launchers `slurm`, `mpi`) -------------------------------------
    nodes: int = setting(
        0, "Nodes the ranks are spread over (`slurm`, `mpi`), as evenly as can be, numbered "
           "node by node as torch elastic does (node 0 has ranks 0, 1, ...); 0: every node of the "
           "SLURM allocation the kernel runs in, every host of `mpi_hosts`, or 1 for an "
           "allocation of its own.", _check_nodes, int)
    gpus_per_node: int = setting(
        0, "GPUs an allocation of its own asks for on each node (`salloc --gpus-per-node`); "
           "0: none.", _count("gpus_per_node", 0, 1024), int)
    slurm_partition: str = setting(
        "", "Partition of an allocation the `slurm` launcher makes itself (`salloc "
            "--partition`); empty: the cluster's default.")
    slurm_time: str = setting(
        "", "Time limit of that allocation (`salloc --time`, e.g. `2:00:00`); empty: the "
            "partition's default.")
    slurm_account: str = setting("", "Account charged for that allocation (`salloc "
                                     "--account`); empty: your default.")
    slurm_allocate: bool = setting(
        False, "Make an allocation of its own even when the kernel runs inside one.",
        kind=bool)
    salloc_args: str = setting(
        "", "More `salloc` arguments (shell words), e.g. `--qos=debug --constraint=a100`.",
        _check_words("salloc_args"))
    srun_args: str = setting("", "More `srun` arguments for the step of node agents.",
                             _check_words("srun_args"))
    mpi_hosts: str = setting(
        "", "Hosts `mpiexec` runs the node agents on, comma-separated (`a,b`); empty: this "
            "host only.")
    mpi_mca: dict[str, str] = setting(
        {}, "`mpiexec --mca` parameters, e.g. `{\"btl_tcp_if_include\": \"ib0\"}` (a JSON "
            "object in the environment variable).", _check_mca, dict)
    mpiexec_args: str = setting("", "More `mpiexec` arguments (shell words).",
                                _check_words("mpiexec_args"))
    cluster_address: str = setting(
        "", "Where the multiplexer listens for the nodes' agents (`slurm`, `mpi`): an IP "
            "address, a host name or an interface name (`ib0`); empty: the address of this "
            "host's name. Nodes must reach it.")
    cluster_ports: str = setting(
        "", "Port range for that endpoint, `FIRST-LAST` (an opening in a firewall); empty: "
            "any free port.", _check_ports)
    node_python: str = setting(
        "", "Python that runs the agent on each node (a path valid there, with "
            "nbdist-provisioner installed); empty: this kernel's interpreter.")
    heartbeat_timeout: float = setting(
        10.0, "Seconds without a heartbeat after which a node counts as lost (and, on a "
              "node, the multiplexer: its ranks end).", _seconds("heartbeat_timeout"), float)

    def __post_init__(self) -> None:
        for f in declared():
            check = f.metadata["check"]
            if check is not None:
                check(getattr(self, f.name), self)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> KernelSettings:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise SettingsError(f"{SETTINGS_ENV} is not valid JSON: {err}") from None
        if not isinstance(data, dict):
            raise SettingsError(f"{SETTINGS_ENV} must hold a JSON object")
        known = {f.name for f in declared()}
        unknown = set(data) - known
        if unknown:
            raise SettingsError(f"unknown settings {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_environ(cls, environ: dict[str, str] | None = None) -> KernelSettings:
        """Read the record the provisioner left for this multiplexer."""
        environ = dict(os.environ) if environ is None else environ
        text = environ.get(SETTINGS_ENV)
        if text is None:
            return cls()
        return cls.from_json(text)


def declared() -> Iterator[Field[Any]]:
    """The settings, in declaration order."""
    return iter(fields(KernelSettings))


def env_var(name: str) -> str:
    return ENV_PREFIX + name.upper()


def default_of(f: Field[Any]) -> Any:
    if callable(f.default_factory):  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return f.default


def default_from_env(f: Field[Any], environ: dict[str, str] | None = None) -> Any:
    """The setting's default: its ``NBDIST_*`` variable if set, else the declared one."""
    environ = dict(os.environ) if environ is None else environ
    raw = environ.get(env_var(f.name))
    if raw is None:
        return default_of(f)
    value = parse_env_value(env_var(f.name), raw, f.metadata["kind"])
    if f.metadata["choices"]:
        value = str(value).lower()
    return value


def parse_env_value(name: str, raw: str, kind: type) -> Any:
    """Parse one ``NBDIST_*`` variable, naming it in any error.

    Text is taken as written (a stream prefix ends in a space); other kinds are stripped.
    """
    if kind is str:
        return raw
    text = raw.strip()
    try:
        if kind is bool:
            lowered = text.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected one of 1/0, true/false, yes/no, on/off")
        if kind is dict:
            value = json.loads(text)
            if not isinstance(value, dict):
                raise ValueError("expected a JSON object")
            return {str(k): str(v) for k, v in value.items()}
        return kind(text)
    except ValueError as err:
        raise SettingsError(f"environment variable {name}={raw!r} is invalid: {err}") from None


def settings_table() -> str:
    """The README's settings table, made from the declarations."""
    rows = ["| setting | env | default | meaning |", "| --- | --- | --- | --- |"]
    for f in declared():
        default = default_of(f)
        shown = json.dumps(default) if isinstance(default, (dict, bool)) else str(default)
        if isinstance(default, float):
            shown = f"{default:g}"
        shown = f"`{shown}`" if shown else "(empty)"
        rows.append(f"| `{f.name}` | `{env_var(f.name)}` | {shown} | {f.metadata['help']} |")
    return "\n".join(rows) + "\n"
