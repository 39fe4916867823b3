"""MultiRankProvisioner: the jupyter_client provisioner behind the multi-rank kernel.

It is a LocalProvisioner for one process, the multiplexer; the multiplexer
starts and supervises the ranks. Its traitlets are the user-facing settings,
resolved with this precedence: kernel.json ``metadata.kernel_provisioner.config``
> ``c.MultiRankProvisioner.*`` in a Jupyter config file > ``NBDIST_*``
environment variables (what a JupyterHub spawner sets) > built-in defaults.
"""

from __future__ import annotations

import os
from typing import Any

from jupyter_client.provisioning import LocalProvisioner
from tornado.web import HTTPError
from traitlets import Bool, CaselessStrEnum, Dict, Float, Int, TraitError, Unicode, default

from .launchers import LauncherError, get_launcher
from .mux.faults import discard_note
from .settings import BACKENDS, SETTINGS_ENV, KernelSettings, SettingsError, parse_env_value

ENV_PREFIX = "NBDIST_"


def _from_env(name: str, kind: type, fallback: Any) -> Any:
    var = ENV_PREFIX + name.upper()
    raw = os.environ.get(var)
    if raw is None:
        return fallback
    try:
        return parse_env_value(var, raw, kind)
    except SettingsError as err:
        raise TraitError(str(err)) from None


class ProvisionerConfigError(HTTPError, ValueError):
    """A bad setting; the message names it and what is accepted.

    A ValueError for jupyter_client / nbclient callers, and a tornado HTTPError so that
    jupyter_server puts the message in the body of the failed ``POST /api/kernels``
    (it answers any other exception with a bare "Unhandled error").
    """

    def __init__(self, message: str) -> None:
        # jupyter_server's API handlers send log_message as is (not %-formatted)
        HTTPError.__init__(self, 500, message, reason="Bad kernel configuration")

    def __str__(self) -> str:
        return str(self.log_message)


class MultiRankProvisioner(LocalProvisioner):  # type: ignore[misc]
    """Start the nbdist multiplexer, which runs one IPython kernel per rank."""

    nproc = Int(help="Number of ranks (one IPython kernel each). Env: NBDIST_NPROC.").tag(
        config=True)
    launcher = Unicode(
        help="How ranks are started: 'local' (subprocesses on this host) or a launcher "
             "registered in the 'nbdist_provisioner.launchers' entry-point group. "
             "Env: NBDIST_LAUNCHER.").tag(config=True)
    backend = CaselessStrEnum(
        BACKENDS,
        help="torch.distributed backend: 'auto' (nccl when every rank has a GPU, else gloo), "
             "'gloo' or 'nccl'. Env: NBDIST_BACKEND.").tag(config=True)
    init_process_group = Bool(
        help="Call torch.distributed.init_process_group on every rank before the first cell. "
             "Env: NBDIST_INIT_PROCESS_GROUP.").tag(config=True)
    env = Dict(
        help="Extra environment variables for every rank. Env: NBDIST_ENV (a JSON object).").tag(
        config=True)
    primary_rank = Int(
        help="The rank that answers completion, inspection and history requests. "
             "Env: NBDIST_PRIMARY_RANK.").tag(config=True)
    stream_prefix = Unicode(
        help="Template put before every output line; fields {rank}, {local_rank}, {host}, "
             "{world_size}. Empty turns prefixes off. Env: NBDIST_STREAM_PREFIX.").tag(
        config=True)
    output_ranks = Unicode(
        help="Whose output is shown: 'all', or ranks like '0' / '0,2' / '1-3' (errors of every "
             "rank are always shown). Env: NBDIST_OUTPUT_RANKS.").tag(config=True)
    collective_timeout = Float(
        help="Seconds a torch.distributed collective may wait before it fails (so a rank "
             "that died never blocks the others forever). Env: NBDIST_COLLECTIVE_TIMEOUT.").tag(
        config=True)
    start_timeout = Float(
        help="Seconds all ranks get to start and report ready. Env: NBDIST_START_TIMEOUT.").tag(
        config=True)

    def __init__(self, **kwargs: Any) -> None:
        # kwargs carry kernel.json metadata.kernel_provisioner.config: refuse typos there
        # instead of letting traitlets drop them silently.
        unknown = sorted(set(kwargs) - set(self.class_trait_names()))
        if unknown:
            known = sorted(self.class_trait_names(config=True))
            raise ProvisionerConfigError(
                f"nbdist-provisioner: unknown setting(s) {unknown} in kernel.json "
                f"metadata.kernel_provisioner.config; known: {known}")
        try:
            super().__init__(**kwargs)
        except TraitError as err:
            raise ProvisionerConfigError(f"nbdist-provisioner: {err}") from None

    @default("nproc")
    def _default_nproc(self) -> int:
        return int(_from_env("nproc", int, KernelSettings.nproc))

    @default("launcher")
    def _default_launcher(self) -> str:
        return str(_from_env("launcher", str, KernelSettings.launcher))

    @default("backend")
    def _default_backend(self) -> str:
        return str(_from_env("backend", str, KernelSettings.backend)).lower()

    @default("init_process_group")
    def _default_init(self) -> bool:
        return bool(_from_env("init_process_group", bool, KernelSettings.init_process_group))

    @default("env")
    def _default_env(self) -> dict[str, str]:
        return dict(_from_env("env", dict, {}))

    @default("primary_rank")
    def _default_primary(self) -> int:
        return int(_from_env("primary_rank", int, KernelSettings.primary_rank))

    @default("stream_prefix")
    def _default_prefix(self) -> str:
        return str(_from_env("stream_prefix", str, KernelSettings.stream_prefix))

    @default("output_ranks")
    def _default_output_ranks(self) -> str:
        return str(_from_env("output_ranks", str, KernelSettings.output_ranks))

    @default("collective_timeout")
    def _default_collective_timeout(self) -> float:
        return float(_from_env("collective_timeout", float, KernelSettings.collective_timeout))

    @default("start_timeout")
    def _default_start_timeout(self) -> float:
        return float(_from_env("start_timeout", float, KernelSettings.start_timeout))

    def resolved_settings(self) -> KernelSettings:
        """The validated settings of this start; raises ProvisionerConfigError (a ValueError)
        naming a bad setting."""
        try:
            settings = KernelSettings(
                nproc=self.nproc, launcher=self.launcher, backend=self.backend,
                init_process_group=self.init_process_group,
                env={str(k): str(v) for k, v in self.env.items()},
                primary_rank=self.primary_rank, stream_prefix=self.stream_prefix,
                output_ranks=self.output_ranks, collective_timeout=self.collective_timeout,
                start_timeout=self.start_timeout,
            )
            get_launcher(settings.launcher)
        except (SettingsError, LauncherError, TraitError) as err:
            raise ProvisionerConfigError(f"nbdist-provisioner: {err}") from None
        return settings

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        settings = self.resolved_settings()
        kwargs = await super().pre_launch(**kwargs)
        env = dict(kwargs.get("env") or os.environ)
        env[SETTINGS_ENV] = settings.to_json()
        kwargs["env"] = env
        return kwargs

    async def cleanup(self, restart: bool = False) -> None:
        if not restart:
            # A restart note (mux.faults) that no multiplexer will read: the kernel is gone.
            connection_file = getattr(self.parent, "connection_file", "")
            if connection_file:
                discard_note(connection_file)
        await super().cleanup(restart=restart)

    def get_shutdown_wait_time(self, recommended: float = 5.0) -> float:
        # The multiplexer asks every rank to stop, then kills stragglers after its grace.
        return max(recommended, 10.0)
