"""How much the engine adds to a bare papermill run of the same trivial notebook.

The engine does more than papermill: typed parameters, the run index, the kernel's run
context, redaction, the HTML rendering and the archive. This measures what that costs.
Runs are interleaved (engine, papermill, engine, …) so drift on the machine hits both alike.

    .venv/bin/python bench/engine_overhead.py [--runs 12]

Last line: {"engine_s_median": …, "papermill_s_median": …, "ratio": …}
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import nbformat
import papermill
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from clusterbook.engine import Engine
from clusterbook.settings import Settings


def write_trivial_notebook(folder: Path) -> Path:
    params = new_code_cell('name: str = "bench"  # a name')
    params.metadata["tags"] = ["parameters"]
    nb = new_notebook(cells=[
        new_markdown_cell("# Trivial\n\nThree cells."),
        params,
        new_markdown_cell("## Say"),
        new_code_cell("print(name)"),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    path = folder / "runbooks" / "01_trivial.ipynb"
    path.parent.mkdir(parents=True)
    nbformat.write(nb, path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=12, help="runs of each (at least 10)")
    args = parser.parse_args()
    logging.getLogger("papermill").setLevel(logging.ERROR)

    folder = Path(tempfile.mkdtemp(prefix="cb-bench-"))
    notebook = write_trivial_notebook(folder)
    engine = Engine(Settings(state_dir=folder / "state", runbooks_dir=notebook.parent,
                             requester="bench"))

    # One untimed warm-up of each: imports, the HTML template, the kernel spec look-up.
    engine.run("01_trivial", {}, requester="bench", source="bench")
    papermill.execute_notebook(str(notebook), str(folder / "warm.ipynb"), progress_bar=False)

    engine_s: list[float] = []
    papermill_s: list[float] = []
    for i in range(max(args.runs, 10)):
        start = time.perf_counter()
        result = engine.run("01_trivial", {"name": f"e{i}"}, requester="bench", source="bench")
        engine_s.append(time.perf_counter() - start)
        assert result.status == "succeeded", result.error

        start = time.perf_counter()
        papermill.execute_notebook(str(notebook), str(folder / f"pm{i}.ipynb"),
                                   parameters={"name": f"p{i}"}, progress_bar=False)
        papermill_s.append(time.perf_counter() - start)
        print(f"run {i + 1:2d}: engine {engine_s[-1]:.3f}s  papermill {papermill_s[-1]:.3f}s")

    engine_median = statistics.median(engine_s)
    papermill_median = statistics.median(papermill_s)
    print(json.dumps({
        "engine_s_median": round(engine_median, 4),
        "papermill_s_median": round(papermill_median, 4),
        "ratio": round(engine_median / papermill_median, 3),
        "runs": len(engine_s),
    }))


if __name__ == "__main__":
    main()
