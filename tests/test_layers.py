"""Import layers of ``critique_jax`` and module length, checked on the source (``ast``, nothing
is imported).

Every module belongs to a layer (:data:`LAYERS`, lowest first); a module may import modules of
its own layer or of lower layers, never of a higher one. Every ``import critique_jax...`` /
``from critique_jax... import`` / relative import counts, wherever it is written (a function-local
import is still a dependency). A module longer than :data:`MAX_LINES` lines says why in the first
paragraph of its docstring, after the phrase :data:`LONG_PHRASE`.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "critique_jax"

#: Layer names, lowest first (the index is the layer number).
LAYER_NAMES = ("base", "text, data and sampling", "algorithms and analysis", "runtime", "entry points")

#: Module or package (all its submodules) -> layer; the longest matching prefix decides.
LAYERS = {
    # 0 base: numerics, models, tasks, devices, run-directory utilities
    "critique_jax": 0,  # the package's own __init__ (a version string)
    "critique_jax.ops": 0,
    "critique_jax.models": 0,
    "critique_jax.tasks": 0,
    "critique_jax.parallel": 0,
    "critique_jax.checkpoint": 0,
    "critique_jax.metrics": 0,
    "critique_jax.wandb_log": 0,
    "critique_jax.perf": 0,
    "critique_jax.runlock": 0,
    "critique_jax.storage": 0,
    # 1 text, data and sampling
    "critique_jax.sampling": 1,
    "critique_jax.data": 1,
    "critique_jax.text": 1,
    # 2 algorithms and analysis (imports within the layer are allowed, e.g. critique -> rl)
    "critique_jax.rl": 2,
    "critique_jax.critique": 2,
    "critique_jax.analysis": 2,
    # 3 runtime: configs, run directories, the run drivers
    "critique_jax.runs": 3,
    "critique_jax.config": 3,
    "critique_jax.rundir": 3,
    "critique_jax.validation": 3,
    # 4 entry points: programs
    "critique_jax.cli": 4,
    "critique_jax.train": 4,
    "critique_jax.train_critic": 4,
    "critique_jax.self_train": 4,
    "critique_jax.sweep": 4,
    "critique_jax.report": 4,
    "critique_jax.memory": 4,
    "critique_jax.evaluate": 4,
    "critique_jax.__main__": 4,
}

#: Modules placed in another layer than their package's (a program inside a library package),
#: module -> (layer, the reason in one line).
LAYER_EXCEPTIONS: dict[str, tuple[int, str]] = {}

#: Violations known today (each a reason to fix, not a permission): none.
KNOWN_VIOLATIONS: set[str] = set()

MAX_LINES = 300
LONG_PHRASE = "Over 300 lines:"
#: Modules being split (the length check skips them): none.
LENGTH_PENDING: set[str] = set()


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def layer_of(module: str) -> int | None:
    """The layer of ``module``: an exception, else the longest prefix in :data:`LAYERS`."""
    if module in LAYER_EXCEPTIONS:
        return LAYER_EXCEPTIONS[module][0]
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in LAYERS:
            return LAYERS[prefix]
    return None


def _resolve(name: str) -> str:
    """The module ``name`` refers to: itself if it is a module of the package, else (an attribute
    of a module, e.g. ``critique_jax.tasks.Problem``) its longest prefix that is one."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in MODULES:
            return ".".join(parts[:n])
    return name


def imports_of(module: str, path: Path) -> set[str]:
    """The package modules ``module`` imports (anywhere in the file)."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package, up level - 1 more
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            names = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in MODULES else stem for a in node.names]
        else:
            continue
        out |= {_resolve(n) for n in names if n == PACKAGE or n.startswith(PACKAGE + ".")}
    out.discard(module)
    return out


def violations() -> set[str]:
    """Every import of a higher layer, as ``"a.b -> c.d (layer 2 -> 3)"``."""
    out = set()
    for module, path in MODULES.items():
        here = layer_of(module)
        for target in imports_of(module, path):
            there = layer_of(target)
            if here is not None and there is not None and there > here:
                out.add(f"{module} -> {target} (layer {here} -> {there})")
    return out


def test_every_module_has_a_layer():
    missing = sorted(m for m in MODULES if layer_of(m) is None)
    assert not missing, f"modules without a layer (add them to LAYERS in {__file__}): {missing}"
    stale = sorted(m for m in LAYER_EXCEPTIONS if m not in MODULES)
    assert not stale, f"LAYER_EXCEPTIONS names modules that do not exist: {stale}"


def test_no_module_imports_a_higher_layer():
    found = violations()
    new = sorted(found - KNOWN_VIOLATIONS)
    assert not new, "imports of a higher layer ({}):\n  {}".format(
        ", ".join(f"{i} {n}" for i, n in enumerate(LAYER_NAMES)), "\n  ".join(new))
    fixed = sorted(KNOWN_VIOLATIONS - found)
    assert not fixed, "KNOWN_VIOLATIONS that no longer occur (remove them):\n  " + "\n  ".join(fixed)


def test_the_checker_sees_relative_and_function_local_imports(tmp_path):
    """``imports_of`` on a made-up module: absolute, ``from`` (submodule vs attribute), relative
    and function-local imports all count."""
    src = tmp_path / "m.py"
    src.write_text(
        "import critique_jax.ops.masked\n"
        "from critique_jax.tasks import Problem\n"
        "from critique_jax import metrics as m\n"
        "from . import sweeps\n"
        "from ..rl import losses\n"
        "import numpy\n"
        "def f():\n"
        "    from critique_jax.config import get_config\n"
    )
    got = imports_of("critique_jax.analysis.m", src)
    assert got == {"critique_jax.ops.masked", "critique_jax.tasks", "critique_jax.metrics",
                   "critique_jax.analysis.sweeps", "critique_jax.rl.losses", "critique_jax.config"}
    assert layer_of("critique_jax.analysis.m") == 2 and layer_of("critique_jax.config") == 3
    assert layer_of("critique_jax.report") == 4 and layer_of("critique_jax.runs.rl_loop") == 3


def _long_without_reason() -> list[str]:
    out = []
    for module, path in MODULES.items():
        rel = path.relative_to(ROOT).as_posix()
        n = len(path.read_text().splitlines())
        if n <= MAX_LINES or rel in LENGTH_PENDING:
            continue
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        first = re.split(r"\n\s*\n", doc.strip(), maxsplit=1)[0]
        reason = first.partition(LONG_PHRASE)[2].strip() if LONG_PHRASE in first else ""
        if not reason:
            out.append(f"{rel} ({n} lines)")
    return out


def test_long_modules_say_why():
    long = _long_without_reason()
    assert not long, (f"modules over {MAX_LINES} lines whose docstring's first paragraph does not say "
                      f"'{LONG_PHRASE} <reason>' (split them, or give the reason):\n  " + "\n  ".join(long))


def test_length_pending_files_are_still_long():
    """LENGTH_PENDING lists only files still over the limit (remove an entry once its file is split)."""
    done = sorted(p for p in LENGTH_PENDING
                  if not (ROOT / p).is_file() or len((ROOT / p).read_text().splitlines()) <= MAX_LINES)
    assert not done, f"LENGTH_PENDING entries no longer over {MAX_LINES} lines (remove them): {done}"
