"""Shared test set-up: 8 virtual CPU devices so mesh tests run anywhere.

XLA_FLAGS must be set before jax is imported anywhere, hence at the top of conftest.
"""

import os
import shutil
import tempfile
import zlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# XLA's cheapest CPU back-end settings: the tests' programs are tiny, so compiling them, not running
# them, is most of the suite's time, and these flags about halve it. The HLO (what the tests check:
# the computation, shardings, collectives) is the same; only LLVM's code generation is lighter.
# The subprocess tests (multiprocess, notebooks) used them already; subprocesses inherit them.
# CRITIQUE_JAX_TEST_OPTIMIZED=1 keeps XLA's default optimisation.
_flags = ["--xla_force_host_platform_device_count=8"]
if os.environ.get("CRITIQUE_JAX_TEST_OPTIMIZED", "") != "1":
    _flags += ["--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true"]
for _flag in _flags:
    if _flag not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


def pytest_configure(config):
    """One persistent compilation cache for the session: tests that build the same programs (a
    straight run and its resumed twin, repeated tiny runs) compile each once. A fresh folder per
    session, removed at the end, so no test depends on an earlier session's cache."""
    config._jax_cache = tempfile.mkdtemp(prefix="critique_jax_test_jax_cache_")
    jax.config.update("jax_compilation_cache_dir", config._jax_cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_unconfigure(config):
    shutil.rmtree(getattr(config, "_jax_cache", ""), ignore_errors=True)


@pytest.fixture
def np_rng(request) -> np.random.Generator:
    """A fresh NumPy generator per test, seeded from the test's name (reproducible)."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
    """Tokenizer and dataset caches go to the session's temporary directory, never to ~."""
    monkeypatch.setenv("CRITIQUE_JAX_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
