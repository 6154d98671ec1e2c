"""Executes the analysis notebooks (``notebooks/0*.ipynb``) against a run root.

    python scripts/run_notebooks.py --root runs/repro --out notebooks [--only 01,02]

Each notebook runs in a fresh ``python3`` kernel of the running interpreter (nbclient), with the
kernel's working directory ``out``. The cell tagged ``parameters`` keeps its defaults; a cell
tagged ``injected-parameters`` right after it sets ``ROOT`` (the run root) and ``FIG_DIR``
(``<out>/figures``) as paths relative to ``out``, plus any other parameters given (papermill's
convention; an injected cell from an earlier execution is replaced). A notebook's earlier figures
are deleted before it runs. The executed notebook, outputs included, is written to ``out`` even
when a cell fails; the failure raises :class:`NotebookError` naming the notebook and the cell.

nbclient, nbformat and ipykernel come with the ``notebooks`` extra (``pip install -e .[notebooks]``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

SOURCE_DIR = Path(__file__).resolve().parents[2] / "notebooks"
PARAMETERS_TAG = "parameters"
INJECTED_TAG = "injected-parameters"


class NotebookError(RuntimeError):
    """A notebook failed: ``notebook`` (path written), ``cell`` (index), the error in the message."""

    def __init__(self, notebook: Path, cell: int | None, message: str):
        self.notebook, self.cell = notebook, cell
        where = f"cell {cell}" if cell is not None else "kernel"
        super().__init__(f"{notebook}: {where} failed: {message}")


def notebook_paths(source_dir: str | Path = SOURCE_DIR, only: Sequence[str] = ()) -> list[Path]:
    """The notebooks ``NN_*.ipynb`` of ``source_dir`` in name order; ``only``: names or number prefixes
    (``"01"``, ``"02_entropy_law"``). ValueError names a selection that matches nothing."""
    paths = sorted(p for p in Path(source_dir).glob("[0-9][0-9]_*.ipynb"))
    if not paths:
        raise FileNotFoundError(f"no notebooks NN_*.ipynb in {source_dir}")
    if not only:
        return paths
    chosen = []
    for sel in only:
        match = [p for p in paths if p.stem == sel or p.stem.split("_", 1)[0] == sel]
        if not match:
            raise ValueError(f"--only {sel!r} matches no notebook in {source_dir}; notebooks: {[p.stem for p in paths]}")
        chosen += [p for p in match if p not in chosen]
    return sorted(chosen)


def inject_parameters(nb: Any, params: Mapping[str, Any]) -> Any:
    """``nb`` with a cell tagged ``injected-parameters`` assigning ``params`` (``repr`` of each value)
    right after the ``parameters`` cell (replacing an earlier injected cell). ValueError when the
    notebook has no ``parameters`` cell."""
    import nbformat

    cells = [c for c in nb.cells if INJECTED_TAG not in c.get("metadata", {}).get("tags", [])]
    index = next((i for i, c in enumerate(cells) if PARAMETERS_TAG in c.get("metadata", {}).get("tags", [])), None)
    if index is None:
        raise ValueError(f"the notebook has no cell tagged {PARAMETERS_TAG!r} to inject {sorted(params)} after")
    source = "# Parameters injected by scripts/run_notebooks.py\n" + "".join(f"{k} = {v!r}\n" for k, v in params.items())
    cell = nbformat.v4.new_code_cell(source.rstrip("\n"))
    cell.metadata["tags"] = [INJECTED_TAG]
    nb.cells = cells[:index + 1] + [cell] + cells[index + 1:]
    return nb


def _failed_cell(nb: Any) -> int | None:
    """Index of the first code cell with an error output."""
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
            return i
    return None


def execute_notebook(source: str | Path, dest: str | Path, params: Mapping[str, Any], *,
                     timeout: int | None = 3600) -> Path:
    """Executes ``source`` with ``params`` injected, in a kernel whose working directory is
    ``dest``'s folder, and writes it (with outputs) to ``dest``. ``timeout``: seconds per cell."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    dest = Path(dest)
    nb = inject_parameters(nbformat.read(source, as_version=4), params)
    client = NotebookClient(nb, kernel_name="python3", timeout=timeout, allow_errors=False, record_timing=False)
    error: NotebookError | None = None
    try:
        client.execute(cwd=str(dest.parent))
    except CellExecutionError as e:
        cell = _failed_cell(nb)
        outputs = nb.cells[cell].outputs if cell is not None else []
        err = next((o for o in outputs if o.get("output_type") == "error"), None)
        message = f"{err['ename']}: {err['evalue']}" if err else str(e).strip().splitlines()[-1]
        error = NotebookError(dest, cell, message)
    except (CellTimeoutError, DeadKernelError) as e:
        error = NotebookError(dest, None, f"{type(e).__name__}: {e}")
    nbformat.write(nb, dest)
    if error is not None:
        raise error
    return dest


def run_notebooks(root: str | Path, out: str | Path, *, only: Sequence[str] = (),
                  params: Mapping[str, Any] | None = None, source_dir: str | Path = SOURCE_DIR,
                  timeout: int | None = 3600, log: Callable[[str], None] = print) -> list[Path]:
    """Executes the selected notebooks of ``source_dir`` against the run root ``root``; writes them
    to ``out`` and their figures to ``<out>/figures``; one progress line per notebook through
    ``log``. ``params`` overrides further parameters (e.g. ``{"N_PROBLEMS": 8}``) in every selected
    notebook. Returns the written notebooks; the first failure raises :class:`NotebookError`."""
    root, out = Path(root).resolve(), Path(out).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"--root {root} is not a directory (the run root of scripts/reproduce.sh)")
    paths = notebook_paths(source_dir, only)
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    params = {"ROOT": os.path.relpath(root, out), "FIG_DIR": os.path.relpath(fig_dir, out), **(params or {})}
    written = []
    for i, path in enumerate(paths, 1):
        t0 = time.perf_counter()
        for stale in fig_dir.glob(f"{path.stem}_*.png"):  # figures of an earlier execution
            stale.unlink()
        dest = execute_notebook(path, out / path.name, params, timeout=timeout)
        figures = sorted(fig_dir.glob(f"{path.stem}_*.png"))
        log(f"[{i}/{len(paths)}] {path.stem}: ok in {time.perf_counter() - t0:.0f} s, "
            f"{len(figures)} figure(s) -> {dest}")
        written.append(dest)
    return written
