"""How a run ended: its status, the failing cell, and the outputs it recorded.

Read from the execution (what papermill and nbclient raised, whether the kernel was stopped)
and from the executed notebook itself; every text that leaves here is ANSI-free and redacted.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from clusterbook.execution import Execution, outline_steps
from clusterbook.notebook import OUTPUT_MIME
from clusterbook.redact import Redactor, strip_ansi

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CellError:
    """The cell that failed and why, with a plain-text (ANSI-free, redacted) traceback."""

    cell_index: int | None
    exec_count: int | None
    ename: str
    evalue: str
    traceback: str
    step_title: str = ""

    def summary(self) -> str:
        where = f"cell {self.cell_index}" if self.cell_index is not None else "the run"
        step = f" ({self.step_title})" if self.step_title else ""
        return f"{self.ename} in {where}{step}: {self.evalue}"


#: Why a run whose kernel the engine stopped ended, by the status it ends with.
STOP_REASONS = {
    "cancelled": "cancelled on request",
    "timed-out": "the run went over its time limit",
    "interrupted": "the engine running it was shut down (run it again to finish the work)",
}


def classify(execution: Execution, redactor: Redactor) -> tuple[str, CellError | None]:
    """The run's status and error from how its execution ended."""
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    exc = execution.exception
    steps = _step_titles(execution.notebook)

    def error_at(index: int | None, ename: str, evalue: str, tb: str = "") -> CellError:
        title = steps[index] if index is not None and index < len(steps) else ""
        return CellError(index, None, ename, redactor.text(strip_ansi(evalue)),
                         redactor.text(strip_ansi(tb)), title)

    if execution.stopped_because in STOP_REASONS:
        status = execution.stopped_because
        return status, error_at(execution.current_cell, status, STOP_REASONS[status])
    if exc is None:
        return "succeeded", None
    if isinstance(exc, PapermillExecutionError):
        tb = "\n".join(exc.traceback or [])
        error = error_at(exc.cell_index, exc.ename, exc.evalue, tb)
        error = CellError(error.cell_index, exc.exec_count, error.ename, error.evalue,
                          error.traceback, error.step_title)
        if exc.ename == "SystemExit" and exc.evalue.strip() in ("", "0", "None"):
            return "succeeded", None
        return "failed", error
    if isinstance(exc, CellTimeoutError):
        _mark_cell_failed(execution.notebook, execution.current_cell, "timed-out")
        return "timed-out", error_at(execution.current_cell, "CellTimeoutError", str(exc))
    if isinstance(exc, DeadKernelError):
        return "failed", error_at(execution.current_cell, "DeadKernelError",
                                  "the kernel died while running this cell")
    return "failed", error_at(execution.current_cell, type(exc).__name__, str(exc))


def _mark_cell_failed(nb: Any, index: int | None, why: str) -> None:
    """papermill leaves a timed-out notebook looking successful; say the truth in it."""
    nb.metadata.setdefault("papermill", {})["exception"] = True
    if index is None or index >= len(nb.cells):
        return
    meta = nb.cells[index].metadata.setdefault("papermill", {})
    meta["status"] = "failed"
    meta["exception"] = True
    nb.cells[index].metadata["clusterbook"] = {"ended": why}


def _step_titles(nb: Any) -> list[str]:
    return [step.title for step in outline_steps(nb)]


def read_outputs(nb: Any) -> dict[str, Any]:
    """The values the notebook stored with ``record()``, later ones winning."""
    outputs: dict[str, Any] = {}
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if OUTPUT_MIME in data:
                payload = data[OUTPUT_MIME]
                try:
                    if isinstance(payload, str):
                        payload = json.loads(payload)
                    outputs[payload["name"]] = payload["value"]
                except (ValueError, KeyError, TypeError):
                    # An output edited by hand or cut short: the others are still worth
                    # showing, and `audit verify` is what tells whether a file was changed.
                    logger.warning("an unreadable recorded output was skipped")
    return outputs
