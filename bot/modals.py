"""The parameter modal: a Slack view generated from a runbook's declared parameters.

One input block per parameter, chosen by type: text for ``str`` (and secrets), a number input
for ``int``/``float`` with the declared bounds, a select for ``Literal`` choices and ``bool``,
a multi-line text for ``list[str]``. Defaults become initial values, the help comment becomes
the hint. On submission each field is converted on its own, so every wrong field gets its own
error under it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from clusterbook.catalogue import Runbook
from clusterbook.errors import ParameterError
from clusterbook.parameters import ParameterSpec, convert_value

CALLBACK_ID = "clusterbook_run_params"
ACTION_ID = "value"
MAX_BLOCKS = 100
_MAX_LABEL = 150
_MAX_HINT = 150


@dataclass(frozen=True)
class ModalContext:
    """What the modal carries through Slack and back (in ``private_metadata``)."""

    runbook: str
    channel: str
    requester: str

    def dump(self) -> str:
        return json.dumps(
            {"runbook": self.runbook, "channel": self.channel, "user": self.requester}
        )

    @classmethod
    def load(cls, text: str) -> ModalContext:
        data = json.loads(text or "{}")
        return cls(str(data["runbook"]), str(data["channel"]), str(data["user"]))


def build_modal(runbook: Runbook, *, context: ModalContext) -> dict[str, Any]:
    """A ``views.open`` view for ``runbook``."""
    blocks: list[dict[str, Any]] = [
        {
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": _cut(f"*{runbook.title}*\n{runbook.description}", 2900),
            },
        }
    ]
    for spec in list(runbook.parameters.values())[: MAX_BLOCKS - 1]:
        blocks.append(_input_block(spec))

    return {
        "type": "modal",
        "callback_id": CALLBACK_ID,
        "private_metadata": context.dump(),
        "title": {"type": "plain_text", "text": _cut("Run " + runbook.short_name, 24)},
        "submit": {"type": "plain_text", "text": "Run"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": blocks,
    }


def _input_block(spec: ParameterSpec) -> dict[str, Any]:
    block: dict[str, Any] = {
        "type": "input",
        "block_id": spec.name,
        "optional": not spec.required,
        "label": {"type": "plain_text", "text": _cut(spec.name, _MAX_LABEL)},
        "element": _element(spec),
    }
    hint = spec.help or spec.describe_type()
    if spec.secret:
        hint = "(secret: never shown or archived) " + hint
    block["hint"] = {"type": "plain_text", "text": _cut(hint, _MAX_HINT)}
    return block


def _element(spec: ParameterSpec) -> dict[str, Any]:
    default = None if spec.secret else spec.default

    if spec.type_name in ("choice", "bool"):
        values = list(spec.choices) if spec.type_name == "choice" else ["true", "false"]
        element: dict[str, Any] = {
            "type": "static_select",
            "action_id": ACTION_ID,
            "options": [_option(v) for v in values[:100]],
        }
        initial = str(default).lower() if isinstance(default, bool) else default
        if initial in values:
            element["initial_option"] = _option(str(initial))
        return element

    if spec.type_name in ("int", "float"):
        element = {
            "type": "number_input",
            "action_id": ACTION_ID,
            "is_decimal_allowed": spec.type_name == "float",
        }
        if default is not None:
            element["initial_value"] = str(default)
        if spec.minimum is not None:
            element["min_value"] = _number(spec.minimum)
        if spec.maximum is not None:
            element["max_value"] = _number(spec.maximum)
        return element

    element = {"type": "plain_text_input", "action_id": ACTION_ID}
    if spec.type_name == "list[str]":
        element["multiline"] = True
        if default:
            element["initial_value"] = "\n".join(str(v) for v in default)
    elif default:
        element["initial_value"] = str(default)
    return element


def read_submission(
    runbook: Runbook, state_values: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, str]]:
    """Typed values and per-field errors from a ``view_submission``'s ``state.values``."""
    valid = [f"{s.name} ({s.describe_type()})" for s in runbook.parameters.values()]
    values: dict[str, Any] = {}
    errors: dict[str, str] = {}

    for name, spec in runbook.parameters.items():
        raw = _raw_value(state_values.get(name, {}).get(ACTION_ID, {}))
        if raw is None:
            if spec.required:
                errors[name] = "a value is needed"
            continue
        if spec.type_name == "list[str]":
            raw = ",".join(part.strip() for part in raw.splitlines() if part.strip())
        try:
            values[name] = convert_value(spec, raw, runbook=runbook.name, valid=valid)
        except ParameterError as exc:
            errors[name] = _cut(exc.message, 150)
    return values, errors


def _raw_value(field_state: dict[str, Any]) -> str | None:
    selected = field_state.get("selected_option")
    if isinstance(selected, dict):
        return str(selected.get("value"))
    value = field_state.get("value")
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    return str(value)


def _option(value: str) -> dict[str, Any]:
    return {"text": {"type": "plain_text", "text": _cut(value, 75)}, "value": value[:150]}


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
