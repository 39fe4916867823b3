"""The settings one multi-rank kernel start runs with.

The provisioner resolves them (kernel.json > jupyter config > ``NBDIST_*``
environment > defaults), validates them, and hands them to the multiplexer as
JSON in one environment variable, so both sides agree on one typed record.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from .ranks import RankSpecError, parse_rank_spec

#: The environment variable carrying the JSON settings to the multiplexer.
SETTINGS_ENV = "NBDIST_KERNEL_SETTINGS"

BACKENDS = ("auto", "gloo", "nccl")
MAX_NPROC = 1024


class SettingsError(ValueError):
    """A setting with a bad value; the message names the setting and what is accepted."""


@dataclass(frozen=True)
class KernelSettings:
    """Everything the multiplexer needs to start and serve N ranks."""

    nproc: int = 2
    launcher: str = "local"
    backend: str = "auto"
    init_process_group: bool = True
    env: dict[str, str] = field(default_factory=dict)
    primary_rank: int = 0
    stream_prefix: str = "[rank {rank}] "
    output_ranks: str = "all"
    collective_timeout: float = 300.0
    start_timeout: float = 120.0
    master_addr: str = "127.0.0.1"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Refuse bad values with a message a user can act on."""
        if isinstance(self.nproc, bool) or not isinstance(self.nproc, int):
            raise SettingsError(f"nproc must be an integer, got {self.nproc!r}")
        if not 1 <= self.nproc <= MAX_NPROC:
            raise SettingsError(f"nproc must be between 1 and {MAX_NPROC}, got {self.nproc}")
        if self.backend not in BACKENDS:
            raise SettingsError(
                f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}"
            )
        if not isinstance(self.launcher, str) or not self.launcher:
            raise SettingsError(f"launcher must be a launcher name, got {self.launcher!r}")
        if not isinstance(self.env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.env.items()
        ):
            raise SettingsError(f"env must map names to string values, got {self.env!r}")
        if isinstance(self.primary_rank, bool) or not isinstance(self.primary_rank, int):
            raise SettingsError(f"primary_rank must be an integer, got {self.primary_rank!r}")
        if not 0 <= self.primary_rank < self.nproc:
            raise SettingsError(
                f"primary_rank must be a rank of this kernel (0-{self.nproc - 1}), "
                f"got {self.primary_rank}"
            )
        try:
            self.stream_prefix.format(rank=0, local_rank=0, host="h", world_size=1)
        except (KeyError, IndexError, ValueError, AttributeError) as err:
            raise SettingsError(
                f"stream_prefix {self.stream_prefix!r} is not a valid template "
                f"(fields: {{rank}}, {{local_rank}}, {{host}}, {{world_size}}): {err}"
            ) from None
        try:
            parse_rank_spec(self.output_ranks, self.nproc)
        except RankSpecError as err:
            raise SettingsError(f"output_ranks: {err}") from None
        for name in ("collective_timeout", "start_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise SettingsError(f"{name} must be a positive number of seconds, got {value!r}")

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
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise SettingsError(f"unknown settings {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_environ(cls, environ: dict[str, str] | None = None) -> KernelSettings:
        """Read the record the provisioner left for this multiplexer."""
        environ = os.environ if environ is None else environ
        text = environ.get(SETTINGS_ENV)
        if text is None:
            return cls()
        return cls.from_json(text)


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
