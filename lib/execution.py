"""One notebook execution through papermill and a real ipykernel, observable and stoppable.

papermill is extended at its own seams rather than bypassed:

- a registered papermill engine (``clusterbook``) wraps papermill's execution manager so that
  every cell start is reported, with the markdown step it belongs to;
- nbclient's ``kernel_manager_class`` is a per-run subclass that passes the run's environment
  to the kernel and hands back the kernel manager, so the run can be stopped from another
  thread (cancel, run time limit) by killing the kernel's process group.

``execute`` returns how the execution ended; deciding what that means for the run (status,
archive, index) is the engine's job.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
from jupyter_client.manager import AsyncKernelManager
from papermill.engines import NBClientEngine, NotebookExecutionManager, papermill_engines

logger = logging.getLogger(__name__)

ENGINE_NAME = "clusterbook"


@dataclass(frozen=True)
class Step:
    """A ``##`` heading of a runbook and the cells it covers."""

    index: int  # 1-based; 0 for cells before the first heading
    title: str


@dataclass(frozen=True)
class CellStart:
    cell_index: int
    cell_total: int
    step: Step
    step_total: int


def outline_steps(nb: Any) -> list[Step]:
    """The step each cell belongs to, from the runbook's ``##`` headings."""
    steps: list[Step] = []
    current = Step(0, _title_of(nb))
    count = 0
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            heading = next(
                (line[3:].strip() for line in cell.source.splitlines() if line.startswith("## ")),
                None,
            )
            if heading:
                count += 1
                current = Step(count, heading)
        steps.append(current)
    return steps


def _title_of(nb: Any) -> str:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return "Preparation"


@dataclass
class KernelHandle:
    """The running kernel of one execution, so another thread can stop it."""

    manager: Any = None
    stopped_because: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def stop(self, reason: str) -> bool:
        """Kill the kernel (and whatever it started). True if there was one to kill."""
        with self._lock:
            if self.stopped_because is None:
                self.stopped_because = reason
            manager = self.manager
        pid = _kernel_pid(manager)
        if pid is None:
            return False
        logger.info("stopping kernel pid %s: %s", pid, reason)
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return False
        return True


def _kernel_pid(manager: Any) -> int | None:
    provisioner = getattr(manager, "provisioner", None)
    pid = getattr(provisioner, "pid", None)
    if pid is None:
        process = getattr(provisioner, "process", None)
        pid = getattr(process, "pid", None)
    return pid


def _kernel_manager_for(
    env: dict[str, str], cwd: Path, sockets: Path, handle: KernelHandle
) -> type:
    """A kernel manager class that starts the kernel with ``env`` in ``cwd`` and reports
    itself. (papermill's own ``cwd`` changes the whole process's directory, which threads
    running other runs would feel; the kernel's working directory is enough.)"""

    class RunKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs: Any) -> None:
            # Local IPC sockets, not TCP on loopback: nothing else on the machine can reach
            # the kernel, and ipykernel has no plain-text-transport warning to print.
            kwargs.setdefault("transport", "ipc")
            # The sockets live in a short private folder: a Unix socket path is limited to
            # 107 bytes, which a deep state directory would exceed.
            kwargs.setdefault("ip", str(sockets / "k"))
            super().__init__(**kwargs)
            handle.manager = self

        async def start_kernel(self, **kwargs: Any) -> None:
            kwargs["env"] = {**os.environ, **env}
            kwargs["cwd"] = str(cwd)
            await super().start_kernel(**kwargs)
            if handle.stopped_because:
                handle.stop(handle.stopped_because)

    return RunKernelManager


class _ReportingManager(NotebookExecutionManager):
    """papermill's execution manager, also reporting each cell start."""

    on_cell_start: Callable[[CellStart], None] | None = None
    steps: list[Step] = []

    def cell_start(self, cell: Any, cell_index: int | None = None, **kwargs: Any) -> None:
        super().cell_start(cell, cell_index, **kwargs)
        if self.on_cell_start is None or cell_index is None:
            return
        total_steps = max((s.index for s in self.steps), default=0)
        try:
            self.on_cell_start(
                CellStart(cell_index, len(self.nb.cells), self.steps[cell_index], total_steps)
            )
        except Exception:  # a broken progress listener must not break the run
            logger.exception("progress listener failed")


class ClusterbookEngine(NBClientEngine):
    """papermill's nbclient engine with cell-start reporting."""

    @classmethod
    def execute_notebook(
        cls,
        nb: Any,
        kernel_name: str,
        output_path: str | None = None,
        progress_bar: bool = False,
        log_output: bool = False,
        autosave_cell_every: int = 30,
        on_cell_start: Callable[[CellStart], None] | None = None,
        **kwargs: Any,
    ) -> Any:
        manager = _ReportingManager(
            nb,
            output_path=output_path,
            progress_bar=False,
            log_output=log_output,
            autosave_cell_every=autosave_cell_every,
        )
        manager.on_cell_start = on_cell_start
        manager.steps = outline_steps(nb)
        manager.notebook_start()
        try:
            cls.execute_managed_notebook(manager, kernel_name, log_output=log_output, **kwargs)
        finally:
            manager.cleanup_pbar()
            manager.notebook_complete()
        return manager.nb


papermill_engines.register(ENGINE_NAME, ClusterbookEngine)


class _KnownParametersFilter(logging.Filter):
    """papermill warns of parameters its own inspector missed (``Literal[...]`` ones); the
    catalogue has already checked every parameter, so the warning would only mislead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Passed unknown parameter")


logging.getLogger("papermill").addFilter(_KnownParametersFilter())


@dataclass
class Execution:
    """How one execution ended, before the engine decides the run's status."""

    notebook: Any
    exception: BaseException | None
    current_cell: int | None
    stopped_because: str | None


def execute(
    *,
    input_path: Path,
    output_path: Path,
    parameters: dict[str, Any],
    env: dict[str, str],
    cwd: Path,
    cell_timeout_s: float,
    handle: KernelHandle,
    on_cell_start: Callable[[CellStart], None] | None = None,
    start_timeout_s: float = 60,
) -> Execution:
    """Run the notebook once; never raises for what happens inside the notebook."""
    import papermill

    current: dict[str, int | None] = {"cell": None}

    def track(event: CellStart) -> None:
        current["cell"] = event.cell_index
        if on_cell_start is not None:
            on_cell_start(event)

    exception: BaseException | None = None
    sockets = Path(tempfile.mkdtemp(prefix="cb-kernel-"))
    notebook = None
    try:
        notebook = papermill.execute_notebook(
            str(input_path),
            str(output_path),
            parameters=parameters,
            engine_name=ENGINE_NAME,
            kernel_name=None,
            progress_bar=False,
            log_output=False,
            start_timeout=int(start_timeout_s),
            execution_timeout=int(cell_timeout_s) if cell_timeout_s else None,
            on_cell_start=track,
            kernel_manager_class=_kernel_manager_for(env, cwd, sockets, handle),
        )
    except Exception as exc:
        exception = exc
    finally:
        shutil.rmtree(sockets, ignore_errors=True)

    if notebook is None:
        notebook = _read_partial(output_path, fallback=input_path)
    return Execution(notebook, exception, current["cell"], handle.stopped_because)


def _read_partial(path: Path, *, fallback: Path) -> Any:
    """The notebook as far as papermill wrote it (it saves at every cell start and end)."""
    for candidate in (path, fallback):
        try:
            return nbformat.read(candidate, as_version=4)
        except (OSError, ValueError) as exc:
            logger.debug("cannot read %s: %s", candidate, exc)
    return nbformat.v4.new_notebook()
