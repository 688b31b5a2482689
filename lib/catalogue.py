"""The runbook catalogue: which notebooks exist in the runbooks folder and what they take.

A runbook is ``runbooks/NN_name.ipynb``. Its title is the first markdown heading; its
parameters come from the cell tagged ``parameters``, read with Python's own parser (papermill's
inspector skips annotations with quotes in them, such as ``Literal["a", "b"]``); its metadata
``clusterbook.changes_cluster`` and ``clusterbook.cluster_param`` say whether it changes a
cluster and which parameter names that cluster (runs that change a cluster take its lock).
"""

from __future__ import annotations

import ast
import io
import logging
import re
import threading
import tokenize
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat

from clusterbook.errors import ParameterError, RunbookNotFound
from clusterbook.parameters import (
    ParameterSet,
    ParameterSpec,
    parse_parameters,
    spec_from_papermill,
    split_assignments,
)

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^(?P<order>\d{2})_(?P<short>[a-z0-9_]+)$")


@dataclass(frozen=True)
class Runbook:
    """One runbook notebook and its declared interface."""

    name: str
    path: Path
    title: str
    description: str
    parameters: dict[str, ParameterSpec]
    changes_cluster: bool
    cluster_param: str | None
    order: int | None

    @property
    def short_name(self) -> str:
        match = _NAME.match(self.name)
        return match.group("short") if match else self.name

    def parse(self, raw: Mapping[str, Any]) -> ParameterSet:
        """Typed values from user input (strings) or already-typed values."""
        values = parse_parameters(self.parameters, raw, runbook=self.name)
        if self.changes_cluster and self.cluster_param and not self.cluster_of(values.values):
            # Without a cluster name there is nothing to lock: two such runs could change
            # the same machines at once.
            raise ParameterError(
                f"{self.name} changes a cluster: {self.cluster_param} must name it, "
                "and it is empty",
                runbook=self.name,
                valid=[f"{self.cluster_param}=NAME"],
            )
        return values

    def parse_words(self, words: list[str]) -> ParameterSet:
        """Typed values from ``key=value`` words as typed on a command line."""
        valid = [f"{s.name} ({s.describe_type()})" for s in self.parameters.values()]
        return self.parse(split_assignments(words, runbook=self.name, valid=valid))

    def cluster_of(self, values: Mapping[str, Any]) -> str | None:
        if not self.cluster_param:
            return None
        value = values.get(self.cluster_param)
        return str(value) if value else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "description": self.description,
            "changes_cluster": self.changes_cluster,
            "cluster_param": self.cluster_param,
            "parameters": [p.to_dict() for p in self.parameters.values()],
        }


class Catalogue:
    """The runbooks in one folder, read lazily and re-read when a file changes.

    A notebook that cannot be read as a runbook (no parameters cell, a parameter of an
    unsupported type, …) is left out of ``list()`` with a warning, so one bad file does not
    stop every other runbook; ``get()`` of it raises its own error, and ``problems()`` lists
    them all.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._cache: dict[Path, tuple[float, Runbook | ParameterError]] = {}
        self._lock = threading.Lock()

    def list(self) -> list[Runbook]:
        return [item for item in self._load_all() if isinstance(item, Runbook)]

    def problems(self) -> dict[str, ParameterError]:
        """Notebooks in the folder that are not usable runbooks, by name, with the reason."""
        return {
            error.runbook or "?": error
            for error in self._load_all()
            if isinstance(error, ParameterError)
        }

    def names(self) -> list[str]:
        return [rb.name for rb in self.list()]

    def get(self, name: str) -> Runbook:
        """By full name (``01_provision``), short name (``provision``) or file name."""
        wanted = name.strip().removesuffix(".ipynb")
        loaded = self._load_all()
        for item in loaded:
            if isinstance(item, Runbook) and wanted in (item.name, item.short_name):
                return item
        for item in loaded:
            if isinstance(item, ParameterError) and item.runbook == wanted:
                raise item
        known = ", ".join(i.name for i in loaded if isinstance(i, Runbook)) or "(none)"
        raise RunbookNotFound(
            f"no runbook named {name!r}",
            hint=f"known runbooks: {known}; list them with `clusterbook runbooks`",
        )

    def pipeline(self, *, before: str) -> list[Runbook]:
        """The numbered runbooks from the first ``01_`` up to, not including, ``before``."""
        stop = self.get(before)
        return [
            rb for rb in self.list()
            if rb.order is not None and 1 <= rb.order < (stop.order or 0)
        ]

    def _load_all(self) -> list[Runbook | ParameterError]:
        if not self.folder.is_dir():
            raise RunbookNotFound(
                f"the runbooks folder {self.folder} does not exist",
                hint="set runbooks_dir (CLUSTERBOOK_RUNBOOKS_DIR) to the folder of notebooks",
            )
        paths = sorted(p for p in self.folder.glob("*.ipynb") if not p.name.startswith("."))
        return [self._load(p) for p in paths]

    def _load(self, path: Path) -> Runbook | ParameterError:
        mtime = path.stat().st_mtime
        with self._lock:
            cached = self._cache.get(path)
            if cached and cached[0] == mtime:
                return cached[1]
        try:
            item: Runbook | ParameterError = load_runbook(path)
        except ParameterError as exc:
            logger.warning("%s is not a usable runbook: %s", path, exc)
            item = exc
        with self._lock:
            self._cache[path] = (mtime, item)
        return item


def load_runbook(path: Path) -> Runbook:
    """Read one notebook's title, metadata and parameter spec."""
    name = path.stem
    try:
        nb = nbformat.read(path, as_version=4)
    except (OSError, ValueError) as exc:  # nbformat's NotJSONError is a ValueError
        raise ParameterError(
            f"runbook {name}: {path.name} is not a readable notebook: {exc}", runbook=name
        ) from exc
    meta = nb.metadata.get("clusterbook", {})
    title, description = _title_and_description(nb)

    cell = next((c for c in nb.cells if "parameters" in c.metadata.get("tags", [])), None)
    if cell is None:
        raise ParameterError(f"runbook {name} has no cell tagged 'parameters'", runbook=name)
    inspected = inspect_parameters(cell.source, runbook=name)
    specs = {
        key: spec_from_papermill(key, info, runbook=name) for key, info in inspected.items()
    }

    match = _NAME.match(name)
    cluster_param = meta.get("cluster_param")
    if cluster_param and cluster_param not in specs:
        raise ParameterError(
            f"runbook {name}: metadata names cluster_param {cluster_param!r}, "
            "which is not a parameter",
            runbook=name,
        )
    return Runbook(
        name=name,
        path=path,
        title=title or name,
        description=description,
        parameters=specs,
        changes_cluster=bool(meta.get("changes_cluster", False)),
        cluster_param=cluster_param,
        order=int(match.group("order")) if match else None,
    )


def inspect_parameters(source: str, *, runbook: str) -> dict[str, dict[str, Any]]:
    """``{name: {inferred_type_name, default, help}}`` from a parameters cell's source.

    Each top-level assignment is a parameter: its annotation is the type, its value the
    default (as source text), the comment on its line the help.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise ParameterError(
            f"runbook {runbook}: the parameters cell is not valid Python: {exc}", runbook=runbook
        ) from None

    comments: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments.setdefault(token.start[0], token.string.lstrip("#").strip())

    found: dict[str, dict[str, Any]] = {}
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            name, annotation, value = node.target.id, ast.unparse(node.annotation), node.value
        elif (isinstance(node, ast.Assign) and len(node.targets) == 1
              and isinstance(node.targets[0], ast.Name)):
            name, annotation, value = node.targets[0].id, "None", node.value
        else:
            continue
        lines = range(node.lineno, (node.end_lineno or node.lineno) + 1)
        help_text = next((comments[n] for n in lines if n in comments), "")
        found[name] = {
            "name": name,
            "inferred_type_name": annotation,
            "default": ast.unparse(value) if value is not None else None,
            "help": help_text,
        }
    return found


def _title_and_description(nb: Any) -> tuple[str, str]:
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        lines = [line.strip() for line in cell.source.splitlines()]
        title = next((line.lstrip("#").strip() for line in lines if line.startswith("#")), "")
        body = [line for line in lines if line and not line.startswith("#")]
        return title, (body[0] if body else "")
    return "", ""
