"""Shared test set-up: 8 virtual CPU devices so mesh tests run anywhere.

XLA_FLAGS must be set before jax is imported anywhere, hence at the top of conftest.
"""

import os
import shutil
import tempfile
import zlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")
#: XLA's cheapest CPU back-end settings: the tests' programs are tiny, so compiling them, not running
#: them, is most of the suite's time. The HLO (what the tests check: the computation, shardings,
#: collectives) is the same; only the code generation is lighter: no LLVM optimisation (about halves
#: compile time), XLA's classic loop emitters instead of the newer fusion emitters (about 40% less
#: again: a tiny SFT + RL run's compile time 22 -> 13 s) and one LLVM module per program (no parallel
#: code generation: the workers use the cores already; about 15% less CPU time). Subprocess tests
#: (multiprocess, notebooks, sweep) use the same flags. CRITIQUE_JAX_TEST_OPTIMIZED=1 keeps XLA's defaults.
FAST_COMPILE = ("--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
                " --xla_cpu_use_fusion_emitters=false --xla_cpu_parallel_codegen_split_count=1")
_flags = ["--xla_force_host_platform_device_count=8"]
if os.environ.get("CRITIQUE_JAX_TEST_OPTIMIZED", "") != "1":
    _flags += FAST_COMPILE.split()
for _flag in _flags:
    if _flag not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


_SHARED_CACHE = "CRITIQUE_JAX_TEST_JAX_CACHE"


def pytest_configure(config):
    """One persistent compilation cache for the session: tests that build the same programs (a
    straight run and its resumed twin, repeated tiny runs, the same tiny config in two files) compile
    each once. A fresh folder per session, removed at the end, so no test depends on an earlier
    session's cache. Under pytest-xdist the workers share the controller's folder (they inherit its
    environment). No size limit: a limit turns on JAX's file lock and an eviction scan of the whole
    folder at every write, which made the suite slower (test_model's thousands of one-op programs).
    Without the lock a worker may read an entry another is still writing; JAX then warns and
    compiles the program itself (a truncated entry fails to decompress)."""
    if os.environ.get("PYTEST_XDIST_WORKER") and os.environ.get(_SHARED_CACHE):
        cache = os.environ[_SHARED_CACHE]
    else:
        cache = config._jax_cache = tempfile.mkdtemp(prefix="critique_jax_test_jax_cache_")
        os.environ[_SHARED_CACHE] = cache
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_unconfigure(config):
    for job in getattr(config, "_background", {}).values():
        for proc in job["procs"]:
            if proc.poll() is None:  # the session ended before its test waited for it
                proc.kill()
                proc.wait()
    shutil.rmtree(getattr(config, "_jax_cache", ""), ignore_errors=True)


def pytest_collection_finish(session):
    """Starts the subprocess work of the collected test modules that have some, as soon as the tests are
    collected, so that it runs on the other CPU core while the in-process tests run (they use about one).

    A module opts in with ``start_background(tmp_path_factory) -> {"procs": [Popen, ...], ...}`` and
    ``BACKGROUND_FIXTURE``, the fixture that waits for it: the work starts when a test using that fixture
    was collected (not for ``-k`` selections without one). The fixture gets the returned dict from the
    ``background`` fixture. Processes still running when the session ends are killed."""
    config = session.config
    config._background = {}
    if config.option.collectonly or os.environ.get("PYTEST_XDIST_WORKER"):
        return  # under pytest-xdist a worker runs only some files: the fixture starts the work
    for item in session.items:
        module = getattr(item, "module", None)
        start = getattr(module, "start_background", None)
        if (start is not None and module.__name__ not in config._background
                and getattr(module, "BACKGROUND_FIXTURE", None) in item.fixturenames):
            config._background[module.__name__] = start(config._tmp_path_factory)


def pytest_collection_modifyitems(session, config, items):
    """Under pytest-xdist (``scripts/test.sh``: files spread over worker processes, in this order)
    the files with subprocess work come first (a worker waits for that work while the others run
    the rest), then the files that say ``SCHEDULE_EARLY = True`` (the long ones: a long file last
    would leave the other workers idle), then the rest."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        def rank(item) -> int:
            module = getattr(item, "module", None)
            return (0 if getattr(module, "start_background", None) is not None
                    else 1 if getattr(module, "SCHEDULE_EARLY", False) else 2)

        items.sort(key=rank)


@pytest.fixture(scope="session")
def background(request, tmp_path_factory):
    """``background(module)``: the dict ``module.start_background`` returned at collection (started
    now if it was not, e.g. under ``--collect-only`` then a direct call)."""

    def get(module):
        jobs = request.config.__dict__.setdefault("_background", {})
        if module.__name__ not in jobs:
            jobs[module.__name__] = module.start_background(tmp_path_factory)
        return jobs[module.__name__]

    return get


@pytest.fixture
def np_rng(request) -> np.random.Generator:
    """A fresh NumPy generator per test, seeded from the test's name (reproducible)."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
    """Tokenizer and dataset caches go to the session's temporary directory, never to ~."""
    monkeypatch.setenv("CRITIQUE_JAX_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def gcs_bucket():
    """``gs://critique-jax-test``: a bucket on a local in-memory GCS server (gcp-storage-emulator,
    the GCS JSON API) that epath (gcsfs) and orbax (tensorstore's GCS driver) both talk to, as they
    would to Google Cloud Storage. One server per test process (gcsfs caches its client)."""
    import logging
    import socket
    from http import HTTPStatus

    from gcp_storage_emulator.handlers import objects
    from gcp_storage_emulator.server import create_server

    plain_download = objects.download

    def download(request, response, storage, *args, **kwargs):
        """The emulator's object download plus the generation headers real GCS sends with every
        object read (tensorstore's GCS driver reads them: without, "Malformed StorageGeneration")."""
        plain_download(request, response, storage, *args, **kwargs)
        if response.status in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
            obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
            response["x-goog-generation"], response["x-goog-metageneration"] = obj["generation"], obj["metageneration"]

    objects.download = download  # module-level: the emulator's handlers call it by name
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    server = create_server("localhost", port, in_memory=True, default_bucket="critique-jax-test")
    server.start()
    url = f"http://localhost:{port}"
    env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url, "GCE_METADATA_HOST": "localhost:1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    for name in ("gcsfs", "gcp_storage_emulator"):  # no credentials: expected, logged at every call
        logging.getLogger(name).setLevel(logging.ERROR)
    yield "gs://critique-jax-test"
    server.stop()
    objects.download = plain_download
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
