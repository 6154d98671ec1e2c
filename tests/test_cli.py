"""The entry points report a bad input in one line and exit 2, before creating anything."""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).parent.parent


def _train(tmp_path, *args):
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "critique_jax.train", "--config=configs/quickstart.py",
           f"--workdir={tmp_path / 'run'}", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    out = _train(tmp_path, "--config.rl.lr=-1", f"--config.init_from={tmp_path / 'nowhere'}")
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith(f"error: init_from='{tmp_path / 'nowhere'}': ")
    assert not (tmp_path / "nowhere").exists() and not (tmp_path / "run").exists()
    out = _train(tmp_path, "--config.rl.lr=-1", "--verbose")
    assert out.returncode != 0 and "Traceback" in out.stderr
    assert "config rl.lr=-1.0: expected a number in (0, 1]" in out.stderr
    assert not (tmp_path / "run").exists()


def _hold(path):
    """A second process that locks the run directory ``path`` until its stdin closes."""
    code = ("import sys; from critique_jax.runlock import lock_run_dir; lock_run_dir(sys.argv[1]); "
            "print('locked', flush=True); sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], env=dict(os.environ, PYTHONPATH=str(ROOT)),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_run_directory_holds_one_run(tmp_path):
    import pytest

    from critique_jax.runs import train
    from critique_jax.runlock import LockHeld, lock_run_dir
    from test_trainer import tiny_config

    holder = _hold(tmp_path / "run")
    try:
        with pytest.raises(LockHeld, match=rf"run is in use by another run \(pid {holder.pid}, "):
            train(tiny_config(tmp_path), str(tmp_path / "run"))
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    lock_run_dir(tmp_path / "run")  # free once the other run ended
    lock_run_dir(tmp_path / "run")  # and again in the same process


def test_compile_cache_setting(tmp_path, monkeypatch):
    """compile_cache: "" -> <cache>/xla, a directory as given, "off" -> none, JAX_COMPILATION_CACHE_DIR wins,
    anything else is a one-line error (jax.config.update recorded, not applied: the suite has its own cache)."""
    import jax
    import pytest

    from critique_jax.cli import use_compile_cache

    updates = []
    monkeypatch.setattr(jax.config, "update", lambda name, value: updates.append((name, value)))
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.setenv("CRITIQUE_JAX_CACHE", str(tmp_path / "cache"))
    assert use_compile_cache("") == str(tmp_path / "cache" / "xla")
    assert use_compile_cache(str(tmp_path / "mine")) == str(tmp_path / "mine")
    assert use_compile_cache("off") is None
    assert updates == [("jax_compilation_cache_dir", str(tmp_path / "cache" / "xla")),
                       ("jax_compilation_cache_dir", str(tmp_path / "mine"))]
    with pytest.raises(ValueError, match=r"compile_cache=1: expected '' \(the default directory\), 'off' or a dir"):
        use_compile_cache(1)
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "env"))
    assert use_compile_cache("") == str(tmp_path / "env") and len(updates) == 2


def test_a_cloud_workdir_it_cannot_serve_is_refused_before_anything_is_created(tmp_path, monkeypatch):
    """An unknown URL scheme, or gs:// without its backend package: one clear error, no local folder."""
    import pytest

    from critique_jax import storage
    from critique_jax.runs import train
    from test_trainer import tiny_config

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"--workdir=hdfs://host/run: unsupported URL scheme hdfs://; expected a "
                                         r"local folder or one of gs://, s3://"):
        train(tiny_config(tmp_path), "hdfs://host/run")
    monkeypatch.setitem(storage.BACKENDS, "gs", "critique_jax_no_such_package")
    with pytest.raises(ValueError, match=r"--workdir=gs://bucket/run: gs:// run directories need the "
                                         r"critique_jax_no_such_package package: pip install -e '.\[cloud\]'"):
        train(tiny_config(tmp_path), "gs://bucket/run")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_cpu_devices_split_the_cpu_before_the_first_device_query(monkeypatch):
    """mesh.cpu_devices=N gives N CPU devices when cli.start runs first (a fresh process: this one's
    backend is started); once devices were queried, a one-line error naming the key; on another
    backend, a config error."""
    import jax
    import pytest

    from critique_jax import config as config_lib, validation
    from critique_jax.cli import use_cpu_devices

    code = ("import sys; from critique_jax import cli, config; c = config.default_config(); "
            "c.mesh.cpu_devices = 3; cli.start(['prog'], c); import jax; print(jax.device_count())")
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", XLA_FLAGS="")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.split()[-1] == "3", out.stderr
    with pytest.raises(ValueError, match=rf"mesh.cpu_devices=2: set before JAX's first device query, but it "
                                         rf"already ran \({jax.device_count()} devices\)"):
        use_cpu_devices(2)
    use_cpu_devices(0)  # leaves the count as it is
    c = config_lib.default_config()
    c.mesh.cpu_devices = 2
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    with pytest.raises(ValueError, match=r"mesh.cpu_devices=2: splits the CPU into devices, but this run computes "
                                         r"on gpu \(JAX_PLATFORMS\); use 0"):
        validation.validate(c, n_devices=1)
