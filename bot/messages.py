"""Every piece of text the bot shows in Slack, in one place.

Functions return either plain ``mrkdwn`` text or a list of Block Kit blocks. Values that came
from people or from runs (names, parameters, errors, outputs) are passed through ``escape``
so they cannot turn into mentions or links, and through the redactor before anything else.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from clusterbook.notebook import render_text
from clusterbook.redact import Redactor, strip_ansi

SECTION_LIMIT = 2900
MAX_TABLE_ROWS = 100
MAX_TABLE_COLUMNS = 20
BAR_WIDTH = 20
STATUS_ICON = {
    "queued": ":hourglass_flowing_sand:",
    "running": ":arrow_forward:",
    "succeeded": ":white_check_mark:",
    "failed": ":x:",
    "timed-out": ":alarm_clock:",
    "cancelled": ":no_entry_sign:",
    "interrupted": ":warning:",
}


_redactor = Redactor()


def register_secrets(values: Iterable[str]) -> None:
    """Also redact these literal values (the bot's credentials, read at start-up)."""
    global _redactor
    _redactor = Redactor(list(values))


def escape(text: Any) -> str:
    """Slack's own escaping for text from users or runs, after redaction."""
    clean = _redactor.text(strip_ansi(str(text)))
    return clean.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def cut(text: str, limit: int = SECTION_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def code(text: Any) -> str:
    """A code span that cannot be broken out of by a backtick in the value."""
    return "`" + escape(text).replace("`", "'") + "`"


def section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": cut(text)}}


def context_block(text: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": cut(text)}]}


# -- help and reading commands ---------------------------------------------------------------


def help_text(command: str) -> str:
    c = command
    return "\n".join(
        [
            f"*clusterbook* runs Jupyter runbooks against Kubernetes clusters. Usage: `{c} WHAT`",
            f"• `{c} runbooks` – what can be run",
            f"• `{c} params NAME` – the parameters of one runbook",
            f"• `{c} run NAME key=value …` – run a runbook (without parameters: a form opens)",
            f"• `{c} up CLUSTER [key=value …]` – provision and set up a cluster, all steps",
            f"• `{c} down CLUSTER` – tear a cluster down (asks for confirmation)",
            f"• `{c} status CLUSTER` – the last runs for a cluster and what is running",
            f"• `{c} runs [CLUSTER]` – recent runs",
            f"• `{c} show RUN` – one run: outputs, error and archived notebook",
            f"• `{c} cancel RUN` – stop a queued or running run",
            'Quote values with spaces: `msg="two words"`.',
        ]
    )


def not_understood(reason: str, command: str, *, show_help: bool) -> str:
    text = f":thinking_face: {escape(reason)}"
    return text + "\n\n" + help_text(command) if show_help else text


def runbook_list(runbooks: Iterable[Any]) -> str:
    lines = ["*Runbooks*"]
    for rb in runbooks:
        lines.append(f"• {code(rb.name)} – {escape(rb.title)}")
    return "\n".join(lines) if len(lines) > 1 else "There are no runbooks yet."


def parameter_list(runbook: Any, command: str) -> str:
    lines = [f"*{escape(runbook.title)}* ({code(runbook.name)})"]
    if runbook.description:
        lines.append(escape(runbook.description))
    if not runbook.parameters:
        lines.append("It takes no parameters.")
    for spec in runbook.parameters.values():
        default = "(secret)" if spec.secret else json.dumps(spec.default, ensure_ascii=False)
        lines.append(
            f"• {code(spec.name)} – {escape(spec.describe_type())}, default {code(default)}"
            + (f" – {escape(spec.help)}" if spec.help else "")
        )
    lines.append(f"Run it: `{command} run {runbook.name} key=value …`")
    return cut("\n".join(lines))


def refused(action: str, *, runbook: str | None = None) -> str:
    what = f"`{action}`" + (f" for {code(runbook)}" if runbook else "")
    return (
        f":lock: You are not allowed to {what} here. Ask an admin to add you to the "
        "clusterbook access file, or use a channel where this is allowed."
    )


def user_error(message: str) -> str:
    return f":warning: {escape(message)}"


def modal_problem(text: str) -> dict[str, Any]:
    """A modal replacing a form that cannot be submitted, saying why."""
    return {
        "type": "modal",
        "title": {"type": "plain_text", "text": "clusterbook"},
        "close": {"type": "plain_text", "text": "Close"},
        "blocks": [section(user_error(text))],
    }


def internal_error(reference: str) -> str:
    return (
        ":boom: Something went wrong on our side; nothing was started. "
        f"Tell an admin the reference `{reference}`."
    )


def cannot_post(channel: str, error: str) -> str:
    return (
        f":no_entry: I cannot post in <#{escape(channel)}> ({escape(error)}), so nothing was "
        "started. Invite me with `/invite @clusterbook` and try again."
    )


def cluster_busy(record: Any) -> str:
    return (
        f":construction: Cluster {code(record.cluster)} is being changed by run "
        f"{code(record.run_id)} ({code(record.runbook)}, {escape(record.status)}, requested by "
        f"{escape(record.requester)}). Nothing was queued; wait for it or cancel it."
    )


def too_busy() -> str:
    return ":construction: Too many runs are waiting already; nothing was queued. Try again later."


def modal_opened(runbook: str) -> str:
    return f"Opening the parameters of {code(runbook)}…"


def queued(runbooks: list[str], *, cluster: str | None = None) -> str:
    names = ", ".join(code(n) for n in runbooks)
    where = f" for cluster {code(cluster)}" if cluster else ""
    return f":hourglass_flowing_sand: Queued {names}{where}. Progress follows in this channel."


# -- runs: index views -----------------------------------------------------------------------


def run_line(record: Any) -> str:
    icon = STATUS_ICON.get(record.status, "")
    cluster = f" · {code(record.cluster)}" if record.cluster else ""
    return (
        f"{icon} {code(record.run_id)} {code(record.runbook)}{cluster} · {escape(record.status)}"
        f" · {escape(record.requester)} · {escape((record.created_at or '')[:19])}"
    )


def run_list(records: list[Any], *, cluster: str | None = None) -> str:
    title = f"*Runs for {code(cluster)}*" if cluster else "*Recent runs*"
    if not records:
        return title + "\nNo runs yet."
    return cut("\n".join([title, *(run_line(r) for r in records)]))


def cluster_status(cluster: str, records: list[Any]) -> str:
    active = [r for r in records if r.status in ("queued", "running")]
    lines = [f"*Cluster {code(cluster)}*"]
    if not records:
        lines.append("No run has touched this cluster yet.")
        return "\n".join(lines)
    last_ok = next((r for r in records if r.status == "succeeded"), None)
    if active:
        lines.append("In progress: " + ", ".join(f"{code(r.runbook)} ({r.status})" for r in active))
    if last_ok is not None:
        lines.append(f"Last success: {code(last_ok.runbook)} at {escape(last_ok.ended_at or '')}")
    lines.append("Recent runs:")
    lines.extend(run_line(r) for r in records[:8])
    return cut("\n".join(lines))


def run_details(record: Any, outputs: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    lines = [run_line(record)]
    if record.params:
        shown = ", ".join(f"{escape(k)}={code(v)}" for k, v in record.params.items())
        lines.append("Parameters: " + shown)
    if record.approved_by:
        lines.append(f"Approved by {escape(record.approved_by)}")
    if record.error_summary:
        lines.append("Error: " + code(cut(record.error_summary, 500)))
    if record.notebook_url:
        lines.append("Archived notebook: " + code(record.notebook_url))
    blocks = [section("\n".join(lines))]
    blocks.extend(output_blocks(outputs or {}))
    return blocks


def cancel_requested(run_id: str) -> str:
    return f":no_entry_sign: Cancelling run {code(run_id)}…"


def cancel_not_possible(run_id: str, status: str) -> str:
    return f"Run {code(run_id)} is already {escape(status)}; nothing to cancel."


# -- destructive actions ------------------------------------------------------------------


def confirm_blocks(*, what: str, pending_id: str) -> list[dict[str, Any]]:
    return [
        section(f":warning: This will *{escape(what)}*. It cannot be undone. Are you sure?"),
        {
            "type": "actions",
            "block_id": "clusterbook_confirm",
            "elements": [
                _button("Yes, do it", "clusterbook_confirm", pending_id, style="danger"),
                _button("Cancel", "clusterbook_abort", pending_id),
            ],
        },
    ]


def approval_blocks(*, what: str, requester: str, pending_id: str) -> list[dict[str, Any]]:
    return [
        section(
            f":raised_hand: <@{escape(requester)}> asks to *{escape(what)}*. "
            "Another person allowed to approve must accept before it runs."
        ),
        {
            "type": "actions",
            "block_id": "clusterbook_approval",
            "elements": [
                _button("Approve", "clusterbook_approve", pending_id, style="primary"),
                _button("Reject", "clusterbook_reject", pending_id, style="danger"),
            ],
        },
    ]


def approval_waiting(what: str) -> str:
    return f"Confirmed. Waiting for a second person to approve: {escape(what)}."


def confirmed(what: str) -> str:
    return f":white_check_mark: Confirmed: {escape(what)}. Starting."


def approved(what: str, *, approver: str) -> str:
    return f":white_check_mark: Approved by <@{escape(approver)}>: {escape(what)}. Starting."


def rejected(what: str, *, by: str) -> str:
    return f":no_entry: Rejected by <@{escape(by)}>: {escape(what)}. Nothing was run."


def aborted(what: str) -> str:
    return f"Cancelled: {escape(what)}. Nothing was run."


def self_approval() -> str:
    return "You cannot approve your own request; another authorized person must."


def not_requester() -> str:
    return "Only the person who asked can confirm this."


def pending_expired() -> str:
    return "This request has expired or was already handled; nothing was run."


def _button(text: str, action_id: str, value: str, *, style: str | None = None) -> dict[str, Any]:
    button: dict[str, Any] = {
        "type": "button",
        "text": {"type": "plain_text", "text": text},
        "action_id": action_id,
        "value": value,
    }
    if style:
        button["style"] = style
    return button


# -- progress and results -------------------------------------------------------------------


def progress_bar(done: int, total: int) -> str:
    total = max(total, 1)
    filled = round(BAR_WIDTH * min(done, total) / total)
    return "█" * filled + "░" * (BAR_WIDTH - filled)


def progress_blocks(
    *,
    title: str,
    run_id: str | None,
    status: str,
    stage: str | None,
    step: int,
    total: int,
    heading: str,
    requester: str,
) -> list[dict[str, Any]]:
    """``step`` is the step now running (1-based; 0 before the first), so the bar shows the
    steps already done."""
    icon = STATUS_ICON.get(status, "")
    stage_text = f"{escape(stage)} · " if stage else ""
    lines = [f"{icon} *{escape(title)}* – {escape(status)}"]
    if step:
        done = step - 1
        lines.append(f"`{progress_bar(done, total)}` {done}/{total} steps done")
        lines.append(f"{stage_text}step {step}/{total}: {escape(heading)}")
    else:
        lines.append(f"{stage_text}{escape(heading) or 'starting…'}")
    run = f"run {code(run_id)} · " if run_id else ""
    return [section("\n".join(lines)), context_block(f"{run}requested by <@{escape(requester)}>")]


def final_blocks(
    *,
    title: str,
    status: str,
    duration_s: float,
    run_ids: list[str],
    requester: str,
    approved_by: str | None,
    outputs: Mapping[str, Any],
    notebook_links: list[str],
    failed_step: str | None,
    native_table: bool = True,
) -> list[dict[str, Any]]:
    icon = STATUS_ICON.get(status, "")
    head = f"{icon} *{escape(title)}* {escape(status)} in {format_duration(duration_s)}"
    if failed_step:
        head += f"\nFailed at: {escape(failed_step)} (details in the thread)"
    blocks = [section(head)]
    blocks.extend(output_blocks(outputs, native_table=native_table))
    who = f"requested by <@{escape(requester)}>"
    if approved_by:
        who += f", approved by <@{escape(approved_by)}>"
    runs = ", ".join(code(r) for r in run_ids)
    links = " · ".join(escape(link) for link in notebook_links)
    blocks.append(
        context_block(f"runs {runs} · {who}" + (f"\nnotebooks: {links}" if links else ""))
    )
    return blocks


def failure_text(*, step: str, ename: str, evalue: str, diagnostics: str) -> str:
    lines = [f"*Failed step:* {escape(step)}", f"*Error:* {code(cut(f'{ename}: {evalue}', 800))}"]
    if diagnostics:
        lines.append("*Diagnostics (excerpt):*\n```" + escape(cut(diagnostics, 2000)) + "```")
    return "\n".join(lines)


def output_blocks(
    outputs: Mapping[str, Any], *, native_table: bool = True, limit: int = 20
) -> list[dict[str, Any]]:
    """Recorded outputs: the first table as a Block Kit table (Slack allows one per message),
    other tables as aligned text, flat mappings as fields, the rest as JSON."""
    blocks: list[dict[str, Any]] = []
    for name, value in list(outputs.items())[:limit]:
        if native_table and table_fits(value):
            blocks.append(section(f"*{escape(name)}*"))
            blocks.append(table_block(value))
            native_table = False
            continue
        if (
            isinstance(value, Mapping)
            and value
            and all(not isinstance(v, (dict, list)) for v in value.values())
        ):
            fields = [
                {"type": "mrkdwn", "text": cut(f"*{escape(k)}*\n{escape(v)}", 1900)}
                for k, v in list(value.items())[:10]
            ]
            blocks.append(section(f"*{escape(name)}*"))
            blocks.append({"type": "section", "fields": fields})
            continue
        rendered = render_text(name, value)
        blocks.append(section("```" + escape(cut(rendered, SECTION_LIMIT - 10)) + "```"))
    return blocks


def table_fits(value: Any) -> bool:
    """A list of rows (dicts) within Slack's table limits: 100 rows, 20 columns."""
    if not isinstance(value, list) or not value or len(value) > MAX_TABLE_ROWS:
        return False
    if not all(isinstance(row, Mapping) for row in value):
        return False
    return len({key for row in value for key in row}) <= MAX_TABLE_COLUMNS


def table_block(rows: list[Mapping[str, Any]]) -> dict[str, Any]:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    header = [_cell(column) for column in columns]
    body = [[_cell(row.get(column, "")) for column in columns] for row in rows]
    return {"type": "table", "rows": [header, *body[: MAX_TABLE_ROWS - 1]]}


def _cell(value: Any) -> dict[str, Any]:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return {"type": "raw_text", "text": cut(_redactor.text(strip_ansi(text)), 500) or "-"}


def format_duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def resumed_after_restart(run_id: str) -> str:
    return f":recycle: The bot restarted; resuming queued run {code(run_id)}."


def held_for_restart(*, title: str, run_id: str, requester: str) -> list[dict[str, Any]]:
    return [
        section(
            f":double_vertical_bar: *{escape(title)}* – queued\nThe bot is restarting before "
            "this run could start; it stays queued and starts when the bot is back."
        ),
        context_block(f"run {code(run_id)} · requested by <@{escape(requester)}>"),
    ]


def interrupted_after_restart(run_id: str) -> str:
    return (
        f":warning: Run {code(run_id)} was interrupted by a bot restart; its partial notebook "
        "is archived. Start it again if needed."
    )
