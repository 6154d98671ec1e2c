"""Run-directory writers: metrics/samples JSONL, TensorBoard events, resume, progress lines."""

import io
import json
import math
import struct

import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from critique_jax.metrics import MetricsWriter, Progress, read_metrics


def _read_events(workdir) -> list[event_pb2.Event]:
    """Events of all TensorBoard files in ``workdir`` (TFRecord framing: u64 length,
    u32 crc, payload, u32 crc)."""
    events = []
    files = sorted(workdir.glob("events.out.tfevents.*"))
    assert files, f"no event file in {workdir}"
    for path in files:
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            events.append(event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length]))
            pos += 12 + length + 4
        assert pos == len(data)
    return events


def _scalars(events) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for e in events:
        for v in e.summary.value:
            out.setdefault(v.tag, []).append((e.step, v.simple_value))
    return out


def test_jsonl_round_trip_with_non_finite_and_jax_scalars(tmp_path, np_rng):
    x = np_rng.normal(size=3)
    rows = [
        {"train/entropy": jnp.float32(x[0]), "train/clipfrac": np.float64(x[1]),
         "perf/tokens": 512},
        {"train/reward": jnp.asarray(x[2], jnp.bfloat16), "perf/step": jnp.asarray(3, jnp.int32),
         "eval/pass@1": np.int64(1), "train/cov_mean": np.asarray(float("nan")),
         "critique/ok": True},
        {"train/entropy": float("inf"), "train/cov_mean": -jnp.inf,
         "eval/pass@k/8": jnp.ones((1,))},
    ]
    expected = [
        {"step": 1, "train/entropy": float(np.float32(x[0])), "train/clipfrac": float(x[1]),
         "perf/tokens": 512},
        {"step": 2, "train/reward": float(jnp.asarray(x[2], jnp.bfloat16).astype(np.float32)),
         "perf/step": 3, "eval/pass@1": 1, "train/cov_mean": math.nan, "critique/ok": True},
        {"step": 3, "train/entropy": math.inf, "train/cov_mean": -math.inf, "eval/pass@k/8": 1.0},
    ]
    samples = [
        {"prompt": "1+1=", "response": "2", "reward": np.float32(1.0), "tokens": np.arange(3)},
        {"prompt": "2+2=", "response": "5", "logp": [float("nan"), -1.5]},
    ]
    with MetricsWriter(tmp_path, tensorboard=False) as w:
        for step, row in enumerate(rows, start=1):
            w.write(step, row)
        w.write_samples(2, samples)
        with pytest.raises(ValueError, match="train/x.*shape \\(2,\\)"):
            w.write(4, {"train/x": np.zeros(2)})
        with pytest.raises(ValueError, match="'step' is reserved"):
            w.write(4, {"step": 1})
    got = read_metrics(tmp_path)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.keys() == e.keys()
        for k in e:
            assert type(g[k]) is type(e[k]), k
            assert g[k] == e[k] or (math.isnan(g[k]) and math.isnan(e[k])), k
    # Strict JSON on disk (no NaN/Infinity tokens), non-finite values as strings.
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    strict = [json.loads(s, parse_constant=lambda c: pytest.fail(f"non-strict {c}")) for s in lines]
    assert strict[1]["train/cov_mean"] == "nan" and strict[2]["train/cov_mean"] == "-inf"
    got_samples = [json.loads(s) for s in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert got_samples == [
        {"step": 2, "prompt": "1+1=", "response": "2", "reward": 1.0, "tokens": [0, 1, 2]},
        {"step": 2, "prompt": "2+2=", "response": "5", "logp": ["nan", -1.5]},
    ]
    # A path to the file works as well as the run directory.
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3]


def _run(workdir, steps, resume_step=None, values=None):
    with MetricsWriter(workdir, tensorboard=False, resume_step=resume_step) as w:
        for s in steps:
            w.write(s, {"train/reward": values[s], "perf/step": s})
            if s % 2 == 0:
                w.write_samples(s, [{"response": f"r{s}", "reward": values[s]}])


def test_resume_drops_later_lines_and_matches_uninterrupted_run(tmp_path, np_rng):
    values = dict(enumerate(np_rng.normal(size=8).tolist()))
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    _run(full, range(1, 8), values=values)
    _run(resumed, range(1, 7), values=values)  # ran to step 6, last checkpoint at step 3
    with open(resumed / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "train/rew')  # a write torn by the crash
    _run(resumed, range(4, 8), resume_step=3, values=values)
    for name in ("metrics.jsonl", "samples.jsonl"):
        assert (resumed / name).read_text() == (full / name).read_text(), name
    assert [r["step"] for r in read_metrics(resumed)] == list(range(1, 8))
    assert not list(resumed.glob("*.tmp"))


def test_tensorboard_scalars_and_purge_on_resume(tmp_path):
    with MetricsWriter(tmp_path) as w:
        w.write(1, {"train/entropy": 0.5, "eval/pass@1": jnp.float32(0.25)})
        w.write(2, {"train/entropy": 0.75})
    scalars = _scalars(_read_events(tmp_path))
    assert scalars == {"train/entropy": [(1, 0.5), (2, 0.75)], "eval/pass@1": [(1, 0.25)]}
    with MetricsWriter(tmp_path, resume_step=1) as w:
        w.write(2, {"train/entropy": 1.0})
    events = _read_events(tmp_path)
    # TensorBoard hides events with step >= the purge step logged at session start.
    starts = [e.step for e in events if e.HasField("session_log")]
    assert starts == [2]
    assert _scalars(events)["train/entropy"] == [(1, 0.5), (2, 0.75), (2, 1.0)]


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "a": 1}\n\n{"step": 2, "a": }\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:3: malformed JSON"):
        read_metrics(tmp_path)
    path.write_text('{"step": 1, "a": 1}\n{"a": 2}\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2: expected an object with an integer"):
        read_metrics(path)
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2"):
        MetricsWriter(tmp_path, tensorboard=False, resume_step=1)


def test_disabled_writer_writes_nothing(tmp_path):
    workdir = tmp_path / "run"
    w = MetricsWriter(workdir, enabled=False)
    w.write(1, {"train/entropy": 1.0})
    w.write_samples(1, [{"response": "x"}])
    w.close()
    assert not workdir.exists()
    closed = MetricsWriter(workdir, tensorboard=False)
    closed.close()
    with pytest.raises(ValueError, match="is closed"):
        closed.write(1, {"train/entropy": 1.0})


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_plain_lines_and_bar():
    log = io.StringIO()
    p = Progress(10, print_every=4, file=log)
    for s in range(1, 11):
        p.update(s, {"train/reward": 0.5 * s, "train/entropy": jnp.float32(0.25), "other": 1})
    p.close()
    lines = log.getvalue().splitlines()
    assert [ln.split()[1] for ln in lines] == ["4/10", "8/10", "10/10"]
    assert "ETA" in lines[0] and lines[-1].endswith("| reward 5 entropy 0.25")
    term = _Terminal()
    bar = Progress(10, initial=2, file=term)
    bar.update(5, {"eval/pass@1": 0.125})
    bar.close()
    assert "5/10" in term.getvalue() and "pass@1=0.125" in term.getvalue()
    quiet = io.StringIO()
    off = Progress(10, enabled=False, file=quiet)
    off.update(10, {"train/reward": 1.0})
    assert quiet.getvalue() == ""


def test_cut_off_last_line_is_dropped_with_a_warning(tmp_path, caplog):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "a": 1}\n{"step": 2, "a')
    with caplog.at_level("WARNING", logger="critique_jax"):
        MetricsWriter(tmp_path, tensorboard=False, resume_step=5).close()
    assert [r["step"] for r in read_metrics(tmp_path)] == [1]
    assert "metrics.jsonl:2: dropped a cut-off last line" in caplog.text


def test_a_cloud_writer_uploads_every_sync_secs_and_at_close(gcs_bucket):
    """gs:// logs are written locally and uploaded whole (object stores cannot append): not before
    ``sync_secs``, always at close; a resumed writer starts from the bucket's file."""
    import os

    from etils import epath

    from critique_jax.storage import Staging

    run = f"{gcs_bucket}/writer"
    staging = Staging(run, fetch=("metrics.jsonl",), sync_secs=3600)
    with MetricsWriter(run, tensorboard=False, staging=staging) as w:
        w.write(1, {"a": 1.0})
        assert not epath.Path(run, "metrics.jsonl").exists()  # within sync_secs
        staging.sync(force=True)
        assert read_metrics(run) == [{"step": 1, "a": 1.0}]
        w.write(2, {"a": 2.0})
        w.write_samples(2, [{"text": "x"}])
    assert [r["step"] for r in read_metrics(run)] == [1, 2]
    assert epath.Path(run, "samples.jsonl").read_text() == '{"step": 2, "text": "x"}\n'
    assert not os.path.exists(staging.local)
    with MetricsWriter(run, tensorboard=False, resume_step=1) as w:
        w.write(2, {"a": 3.0})
    assert read_metrics(run) == [{"step": 1, "a": 1.0}, {"step": 2, "a": 3.0}]
