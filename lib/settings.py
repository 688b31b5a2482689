"""Typed settings, built once at the edge (CLI, bot start-up, a notebook's first cell).

Precedence, lowest first:

1. built-in defaults (the embedded default: everything under one local state directory);
2. the config file: ``$CLUSTERBOOK_CONFIG`` if set, else ``clusterbook.toml`` in the state
   directory if it exists;
3. environment variables ``CLUSTERBOOK_<FIELD>`` (for example ``CLUSTERBOOK_ARCHIVE_URL``);
4. explicit overrides passed by the caller (CLI flags).

Nothing below the edge reads the environment for settings; it gets a ``Settings`` passed in.
"""

from __future__ import annotations

import dataclasses
import getpass
import os
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, get_args

from clusterbook.errors import ConfigError

ENV_PREFIX = "CLUSTERBOOK_"
SshAddress = Literal["public", "private", "bastion"]

#: The repository's own runbooks folder, used when no other is configured.
DEFAULT_RUNBOOKS_DIR = Path(__file__).resolve().parent.parent / "runbooks"


def default_state_dir() -> Path:
    """Where clusterbook keeps its state when nothing else is configured."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "clusterbook"


@dataclass(frozen=True)
class Settings:
    """Everything a run needs to know about where things live and how to reach them."""

    state_dir: Path = field(default_factory=default_state_dir)
    #: ``file:///abs/dir``, a plain directory path, or ``s3://bucket/prefix``.
    archive_url: str = ""
    #: SQLite run index.
    index_path: Path | None = None
    runbooks_dir: Path = DEFAULT_RUNBOOKS_DIR
    #: AWS endpoint override (the sandbox's moto server); None means real AWS.
    aws_endpoint_url: str | None = None
    aws_region: str = "us-east-1"
    #: Which address of an instance Fabric connects to.
    ssh_address: SshAddress = "public"
    ssh_bastion: str | None = None
    #: True when the product runs against the local sandbox (moto + nspawn hosts).
    sandbox: bool = False
    cell_timeout_s: float = 1800.0
    run_timeout_s: float = 7200.0
    #: Who is asking, for the run record (CLI user by default).
    requester: str = field(default_factory=getpass.getuser)
    #: Names this engine's machine in the run index; runs of a dead process are recovered
    #: only by the same instance. Set it to a stable name where the host name changes on
    #: every restart (a Kubernetes pod).
    instance_name: str = field(default_factory=socket.gethostname)

    def __post_init__(self) -> None:
        object.__setattr__(self, "state_dir", Path(self.state_dir).expanduser())
        object.__setattr__(self, "runbooks_dir", Path(self.runbooks_dir).expanduser())
        if not self.archive_url:
            object.__setattr__(self, "archive_url", str(self.state_dir / "archive"))
        if self.index_path is None:
            object.__setattr__(self, "index_path", self.state_dir / "runs.sqlite3")
        else:
            object.__setattr__(self, "index_path", Path(self.index_path).expanduser())
        if self.ssh_address not in get_args(SshAddress):
            raise ConfigError(
                f"ssh_address must be one of {', '.join(get_args(SshAddress))}, "
                f"not {self.ssh_address!r}"
            )
        if self.sandbox and self.ssh_address != "private":
            # The sandbox's EC2 makes up public addresses that may belong to anyone on the
            # internet; its machines answer only at their private addresses.
            raise ConfigError(
                f"ssh_address = {self.ssh_address!r} cannot be used with the sandbox: its "
                "machines answer only at their private addresses, and the public ones its "
                "EC2 reports are made up (they may belong to strangers)",
                hint='set ssh_address = "private" (CLUSTERBOOK_SSH_ADDRESS=private), as '
                "`clusterbook sandbox up` writes it",
            )

    @property
    def clusters_dir(self) -> Path:
        """Per-cluster state (inventory, private keys, kubeconfig), one folder each."""
        return self.state_dir / "clusters"

    def cluster_dir(self, cluster: str) -> Path:
        return self.clusters_dir / cluster

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form, for handing to a notebook kernel. Holds no secret."""
        data = dataclasses.asdict(self)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Settings:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def load(
        cls,
        *,
        environ: Mapping[str, str] | None = None,
        config_file: Path | None = None,
        **overrides: Any,
    ) -> Settings:
        """Build settings from defaults, the config file, the environment and overrides."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}

        env_state = environ.get(ENV_PREFIX + "STATE_DIR")
        state_dir = Path(overrides.get("state_dir") or env_state or default_state_dir())
        config_file = config_file or _config_path(environ, state_dir)
        if config_file is not None:
            values.update(_read_config(config_file))

        values.update(_read_environ(environ))
        values.update({k: v for k, v in overrides.items() if v is not None})

        try:
            return cls(**_coerce(values))
        except TypeError as exc:
            raise ConfigError(f"invalid settings: {exc}") from exc


def _config_path(environ: Mapping[str, str], state_dir: Path) -> Path | None:
    explicit = environ.get(ENV_PREFIX + "CONFIG")
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"config file {path} (from {ENV_PREFIX}CONFIG) does not exist",
                hint="create it or unset the variable",
            )
        return path
    candidate = state_dir / "clusterbook.toml"
    return candidate if candidate.is_file() else None


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc

    known = {f.name for f in dataclasses.fields(Settings)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"unknown setting(s) in {path}: {', '.join(unknown)}",
            hint=f"known settings: {', '.join(sorted(known))}",
        )
    return data


def _read_environ(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        raw = environ.get(ENV_PREFIX + f.name.upper())
        if raw is not None and raw != "":
            values[f.name] = raw
    return values


def _coerce(values: dict[str, Any]) -> dict[str, Any]:
    """Turn strings from the environment into the declared field types."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        if name in ("cell_timeout_s", "run_timeout_s") and isinstance(value, str):
            try:
                value = float(value)
            except ValueError as exc:
                raise ConfigError(f"{name} must be a number of seconds, not {value!r}") from exc
        elif name == "sandbox" and isinstance(value, str):
            lowered = value.strip().lower()
            if lowered not in ("1", "0", "true", "false", "yes", "no"):
                raise ConfigError(f"sandbox must be true or false, not {value!r}")
            value = lowered in ("1", "true", "yes")
        out[name] = value
    return out
