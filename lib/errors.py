"""Every error clusterbook raises on purpose, split by what the caller should do about it.

    ClusterbookError                  root: catch this to catch everything of ours
    ├── UserInputError                fix the input and try again; nothing was changed
    │   ├── ParameterError            a runbook parameter is unknown, mistyped or out of range
    │   ├── RunbookNotFound           no runbook of that name in the catalogue
    │   ├── RunNotFound               no run of that id in the index
    │   └── ConfigError               settings or a config file are wrong
    ├── LockHeldError                 another changing run holds the cluster; wait or cancel it
    ├── MissingComponentError         a tool or binary is not installed; the message says how
    ├── ExternalServiceError          a service we depend on failed; often worth a retry
    │   ├── AwsError                  EC2/S3/SSM refused or failed (carries the AWS error code)
    │   ├── HostError                 SSH to a node or a command on it failed
    │   └── KubeError                 the Kubernetes API refused or failed
    ├── ArchiveError                  the run archive could not be written or read
    ├── EngineClosed                  the engine is shutting down; the run stays queued
    └── AuditError                    `audit verify` found a changed record or file

Each error carries a message meant for the person who has to act on it: what went wrong,
where (which node, which step, which parameter) and what to do next.
"""

from __future__ import annotations


class ClusterbookError(Exception):
    """Root of every error clusterbook raises on purpose."""

    #: Process exit code the CLI uses for this kind of error.
    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class UserInputError(ClusterbookError):
    """The input was wrong; nothing was changed. Fix it and try again."""

    exit_code = 2


class ParameterError(UserInputError):
    """A runbook parameter is unknown, of the wrong type or out of range."""

    def __init__(self, message: str, *, runbook: str, valid: list[str] | None = None) -> None:
        hint = None
        if valid:
            hint = f"valid parameters of {runbook}: {', '.join(valid)}"
        super().__init__(message, hint=hint)
        self.runbook = runbook
        self.valid = valid or []


class RunbookNotFound(UserInputError):
    """No runbook of that name exists."""


class RunNotFound(UserInputError):
    """No run with that id is in the run index."""


class ConfigError(UserInputError):
    """Settings or a configuration file are invalid."""


class LockHeldError(ClusterbookError):
    """Another run that changes the same cluster is in progress."""

    exit_code = 3

    def __init__(self, message: str, *, cluster: str, holder: str, since: str) -> None:
        super().__init__(message, hint="wait for that run to finish, or cancel it")
        self.cluster = cluster
        self.holder = holder
        self.since = since


class MissingComponentError(ClusterbookError):
    """A program, binary or package that this action needs is not installed."""

    exit_code = 4


class ExternalServiceError(ClusterbookError):
    """A service clusterbook depends on failed. Often temporary: retrying may help."""

    exit_code = 5
    retryable = True


class AwsError(ExternalServiceError):
    """An AWS API call failed."""

    def __init__(self, message: str, *, code: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.code = code


class HostError(ExternalServiceError):
    """SSH to a node, or a command run on it, failed."""

    def __init__(
        self,
        message: str,
        *,
        host: str | None = None,
        command: str | None = None,
        exit_status: int | None = None,
        stderr_tail: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.host = host
        self.command = command
        self.exit_status = exit_status
        self.stderr_tail = stderr_tail


class KubeError(ExternalServiceError):
    """The Kubernetes API refused a request or a cluster did not reach the wanted state."""


class ArchiveError(ClusterbookError):
    """The run archive or the run index could not be written or read."""

    exit_code = 6


class EngineClosed(ClusterbookError):
    """The engine is shutting down and starts no more runs; a queued run stays queued."""


class AuditError(ClusterbookError):
    """The audit chain or an archived file does not match what was recorded."""

    exit_code = 7
