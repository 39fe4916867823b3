"""MultiRankProvisioner: the jupyter_client provisioner behind the multi-rank kernel.

It is a LocalProvisioner for one process, the multiplexer; the multiplexer
starts and supervises the ranks. Its traitlets are the user-facing settings,
resolved with this precedence: kernel.json ``metadata.kernel_provisioner.config``
> ``c.MultiRankProvisioner.*`` in a Jupyter config file > ``NBDIST_*``
environment variables (what a JupyterHub spawner sets) > built-in defaults.
"""

from __future__ import annotations

import os
from dataclasses import Field
from typing import Any

from jupyter_client.provisioning import LocalProvisioner
from tornado.web import HTTPError
from traitlets import (
    Bool,
    CaselessStrEnum,
    Dict,
    Float,
    Int,
    TraitError,
    TraitType,
    Unicode,
    default,
)

from .launchers import LauncherError, get_launcher
from .settings import (
    SETTINGS_ENV,
    KernelSettings,
    SettingsError,
    declared,
    default_from_env,
    env_var,
)


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


def _trait(f: Field[Any]) -> TraitType[Any, Any]:
    """The traitlet of one declared setting (help text from the declaration)."""
    kind, meta = f.metadata["kind"], f.metadata
    help_text = f"{meta['help']} Env: {env_var(f.name)}."
    trait: TraitType[Any, Any]
    if meta["choices"]:
        trait = CaselessStrEnum(meta["choices"], help=help_text)
    elif kind is int:
        trait = Int(help=help_text)
    elif kind is float:
        trait = Float(help=help_text)
    elif kind is bool:
        trait = Bool(help=help_text)
    elif kind is dict:
        trait = Dict(help=help_text)
    else:
        trait = Unicode(help=help_text)
    return trait.tag(config=True)


def _env_default(f: Field[Any]) -> Any:
    def default_value(self: Any) -> Any:
        try:
            return default_from_env(f)
        except SettingsError as err:
            raise TraitError(str(err)) from None
    return default(f.name)(default_value)


#: One traitlet per declared setting, defaulting to its NBDIST_* variable.
_SettingTraits: type[LocalProvisioner] = type(
    "_SettingTraits", (LocalProvisioner,),
    {"__module__": __name__,
     **{f.name: _trait(f) for f in declared()},
     **{f"_default_{f.name}": _env_default(f) for f in declared()}})


class MultiRankProvisioner(_SettingTraits):  # type: ignore[misc,valid-type]
    """Start the nbdist multiplexer, which runs one IPython kernel per rank."""

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

    def resolved_settings(self) -> KernelSettings:
        """The validated settings of this start; raises ProvisionerConfigError (a ValueError)
        naming a bad setting."""
        try:
            values = {f.name: getattr(self, f.name) for f in declared()}
            values["env"] = {str(k): str(v) for k, v in values["env"].items()}
            settings = KernelSettings(**values)
            get_launcher(settings.launcher).check_settings(settings)
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

    def get_shutdown_wait_time(self, recommended: float = 5.0) -> float:
        # The multiplexer asks every rank to stop, then kills stragglers after its grace.
        return max(recommended, 10.0)
