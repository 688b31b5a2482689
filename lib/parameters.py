"""Runbook parameters: their declared spec, and turning user text into typed values.

A runbook declares its parameters in the cell tagged ``parameters``, one annotated assignment
per line with a trailing comment as help::

    cluster: str = "demo"            # name of the cluster (letters, digits, '-')
    workers: int = 1                 # worker nodes [0..50]
    os_image: Literal["ubuntu-24.04", "ubuntu-22.04"] = "ubuntu-24.04"  # OS image
    token: str = ""                  # (secret) an API token, never shown or archived

Supported types: ``str``, ``int``, ``float``, ``bool``, ``list[str]`` and ``Literal[...]``
(a closed set of choices). ``[min..max]`` in the help bounds a number. ``(secret)`` at the
start of the help marks a value that is redacted everywhere.

User text (``key=value`` from the CLI or Slack) is parsed into these types here, before any
kernel starts; it is never evaluated as code. papermill writes the values into the notebook
as escaped literals.
"""

from __future__ import annotations

import ast
import json
import logging
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from clusterbook.errors import ParameterError

logger = logging.getLogger(__name__)

_RANGE = re.compile(r"\[\s*(-?[0-9.]+)?\s*\.\.\s*(-?[0-9.]+)?\s*\]")
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")
MAX_VALUE_LENGTH = 4096


@dataclass(frozen=True)
class ParameterSpec:
    """One declared parameter of a runbook."""

    name: str
    type_name: str  # str | int | float | bool | list[str] | choice
    default: Any
    help: str = ""
    secret: bool = False
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    required: bool = False

    def describe_type(self) -> str:
        if self.type_name == "choice":
            return "one of " + ", ".join(self.choices)
        if self.minimum is not None or self.maximum is not None:
            low = "" if self.minimum is None else _number_text(self.minimum)
            high = "" if self.maximum is None else _number_text(self.maximum)
            return f"{self.type_name} [{low}..{high}]"
        return self.type_name

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type_name,
            "default": None if self.secret else self.default,
            "help": self.help,
            "secret": self.secret,
            "choices": list(self.choices),
            "minimum": self.minimum,
            "maximum": self.maximum,
            "required": self.required,
        }


@dataclass(frozen=True)
class ParameterSet:
    """Typed values for one run, with the names of the secret ones."""

    values: dict[str, Any] = field(default_factory=dict)
    secret_names: frozenset[str] = frozenset()

    def redacted(self) -> dict[str, Any]:
        """The values as they may be shown and archived."""
        return {k: ("[REDACTED:secret]" if k in self.secret_names else v)
                for k, v in self.values.items()}

    def secret_values(self) -> list[str]:
        out: list[str] = []
        for name in self.secret_names:
            value = self.values.get(name)
            if isinstance(value, str):
                out.append(value)
            elif isinstance(value, list):
                out.extend(str(v) for v in value)
        return out


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def spec_from_papermill(name: str, info: Mapping[str, Any], *, runbook: str) -> ParameterSpec:
    """Build a spec from one entry of ``papermill.inspect_notebook``'s answer."""
    raw_type = (info.get("inferred_type_name") or "None").strip()
    raw_default = info.get("default")
    help_text = (info.get("help") or "").strip()

    try:
        default = ast.literal_eval(raw_default) if raw_default is not None else None
    except (ValueError, SyntaxError):
        raise ParameterError(
            f"runbook {runbook}: the default of {name!r} ({raw_default}) is not a plain literal",
            runbook=runbook,
        ) from None

    secret = help_text.lower().startswith("(secret)")
    if secret:
        help_text = help_text[len("(secret)"):].strip()

    type_name, choices = _normalise_type(raw_type, default, name=name, runbook=runbook)
    minimum = maximum = None
    bounds = _RANGE.search(help_text)
    if bounds and type_name in ("int", "float"):
        minimum = float(bounds.group(1)) if bounds.group(1) else None
        maximum = float(bounds.group(2)) if bounds.group(2) else None

    return ParameterSpec(
        name=name,
        type_name=type_name,
        default=default,
        help=help_text,
        secret=secret,
        choices=choices,
        minimum=minimum,
        maximum=maximum,
        required=default is None,
    )


def _normalise_type(
    raw: str, default: Any, *, name: str, runbook: str
) -> tuple[str, tuple[str, ...]]:
    compact = raw.replace(" ", "")
    if compact.startswith(("Literal[", "typing.Literal[")):
        inner = compact[compact.index("[") + 1 : -1]
        try:
            parsed = ast.literal_eval(f"({inner},)")
        except (ValueError, SyntaxError):
            raise ParameterError(
                f"runbook {runbook}: cannot read the choices of {name!r}: {raw}", runbook=runbook
            ) from None
        if not all(isinstance(value, str) for value in parsed):
            # A choice arrives in the notebook as the text that was chosen; a Literal of
            # numbers would hand the notebook "1" where its code expects 1.
            raise ParameterError(
                f"runbook {runbook}: the choices of {name!r} must be strings ({raw}); for a "
                "number, declare int or float with a [min..max] range in the help",
                runbook=runbook,
            )
        return "choice", tuple(parsed)
    if compact in ("list[str]", "List[str]", "typing.List[str]", "list"):
        return "list[str]", ()
    if compact in ("str", "int", "float", "bool"):
        return compact, ()
    if compact == "None":
        inferred = {bool: "bool", int: "int", float: "float", str: "str", list: "list[str]"}
        if type(default) in inferred:
            return inferred[type(default)], ()
    raise ParameterError(
        f"runbook {runbook}: parameter {name!r} has type {raw!r}; supported are str, int, "
        "float, bool, list[str] and Literal[...]",
        runbook=runbook,
    )


def split_assignments(words: Iterable[str], *, runbook: str, valid: list[str]) -> dict[str, str]:
    """``["a=1", "b=x y"]`` to ``{"a": "1", "b": "x y"}``; a word without ``=`` is refused."""
    out: dict[str, str] = {}
    for word in words:
        key, sep, value = word.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ParameterError(
                f"{word!r} is not a parameter assignment; write name=value", runbook=runbook,
                valid=valid,
            )
        if key in out:
            raise ParameterError(f"parameter {key!r} is given twice", runbook=runbook, valid=valid)
        out[key] = value
    return out


def parse_parameters(
    specs: Mapping[str, ParameterSpec], raw: Mapping[str, Any], *, runbook: str
) -> ParameterSet:
    """Check and convert user values against the specs; defaults fill what is not given.

    Strings are parsed (they come from a person); values already of the declared type pass
    through the same checks.
    """
    valid = [f"{s.name} ({s.describe_type()})" for s in specs.values()]
    unknown = sorted(set(raw) - set(specs))
    if unknown:
        raise ParameterError(
            f"{runbook} has no parameter named {', '.join(map(repr, unknown))}",
            runbook=runbook, valid=valid,
        )

    values: dict[str, Any] = {}
    for name, spec in specs.items():
        if name in raw:
            values[name] = convert_value(spec, raw[name], runbook=runbook, valid=valid)
        elif spec.required:
            raise ParameterError(
                f"{runbook} needs a value for {name!r} ({spec.help or spec.describe_type()})",
                runbook=runbook, valid=valid,
            )
        else:
            values[name] = spec.default

    secrets = frozenset(s.name for s in specs.values() if s.secret)
    return ParameterSet(values=values, secret_names=secrets)


def convert_value(spec: ParameterSpec, value: Any, *, runbook: str, valid: list[str]) -> Any:
    """One value to the spec's type, or a ParameterError saying what was expected."""

    def refuse(why: str) -> ParameterError:
        shown = "(secret value)" if spec.secret else repr(value)
        if isinstance(value, str) and len(value) > 60 and not spec.secret:
            shown = repr(value[:57] + "...")
        return ParameterError(
            f"parameter {spec.name!r}: {shown} {why}", runbook=runbook, valid=valid
        )

    if isinstance(value, str) and len(value) > MAX_VALUE_LENGTH:
        raise refuse(f"is longer than {MAX_VALUE_LENGTH} characters")

    kind = spec.type_name
    if kind == "str":
        if not isinstance(value, str):
            raise refuse("is not text")
        return value
    if kind == "choice":
        text = str(value).strip()
        if text not in spec.choices:
            raise refuse(f"is not one of {', '.join(spec.choices)}")
        return text
    if kind == "bool":
        return _to_bool(value, refuse)
    if kind in ("int", "float"):
        number = _to_number(value, kind, refuse)
        if spec.minimum is not None and number < spec.minimum:
            raise refuse(f"is below the minimum {_number_text(spec.minimum)}")
        if spec.maximum is not None and number > spec.maximum:
            raise refuse(f"is above the maximum {_number_text(spec.maximum)}")
        return number
    if kind == "list[str]":
        return _to_list(value, refuse)
    raise refuse(f"has an unsupported type {kind}")


def _to_bool(value: Any, refuse) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise refuse("is not a yes/no value (use true or false)")


def _to_number(value: Any, kind: str, refuse) -> int | float:
    number = _parse_number(value, kind, refuse)
    if isinstance(number, float) and not math.isfinite(number):
        # nan compares false with every bound and would slip past any range check.
        raise refuse("is not a finite number")
    return number


def _parse_number(value: Any, kind: str, refuse) -> int | float:
    if isinstance(value, bool):
        raise refuse(f"is not {'an integer' if kind == 'int' else 'a number'}")
    if kind == "int" and isinstance(value, int):
        return value
    if kind == "float" and isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip().replace("_", "")
    if not text.isascii():
        raise refuse(f"is not {'an integer' if kind == 'int' else 'a number'} (use digits 0-9)")
    try:
        return int(text, 10) if kind == "int" else float(text)
    except ValueError:
        raise refuse(f"is not {'an integer' if kind == 'int' else 'a number'}") from None


def _to_list(value: Any, refuse) -> list[str]:
    if isinstance(value, list):
        if not all(isinstance(v, str) for v in value):
            raise refuse("must be a list of text values")
        return list(value)
    text = str(value).strip()
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            raise refuse('is not a list; write a,b,c or ["a", "b"]') from None
        if not isinstance(parsed, list) or not all(isinstance(v, str) for v in parsed):
            raise refuse("must be a list of text values")
        return parsed
    return [part.strip() for part in text.split(",") if part.strip()]
