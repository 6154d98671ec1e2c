"""The analysis notebooks run end to end on a tiny run root built here, plus the sweep-loading and
plotting helpers they use (on hand-written sweep directories)."""

import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import nbformat
import numpy as np
import pytest
from matplotlib.figure import Figure

from critique_jax import config as config_lib
from critique_jax.analysis import (covariance_by_accuracy, fork_share_by_token, notebooks, plots, sweeps,
                                   token_entropy, top_entropy_positions)
from critique_jax.metrics import MetricsWriter
from critique_jax.runs.across_run import evaluate_across, resolve_which
from critique_jax.runs import self_train, train, train_critic
from critique_jax.runs.budget_sweep import budget_sweep
from critique_jax.runs.evaluation_run import EvalSettings, eval_problems, evaluate_policy
from critique_jax.runs.gate import critique_gate, write_gate
from critique_jax.runs.policies import load_policy, load_run_config

from test_trainer import tiny_config

#: notebook -> the figures it must write (FIG_DIR/<notebook>_<name>.png).
FIGURES = {
    "01_entropy_collapse": ["curves", "clip_cov_band"],
    "02_entropy_law": ["law_fits", "early_fit", "law_fits_batch"],
    "03_covariance": ["cov_vs_dH", "cov_vs_step", "cov_by_accuracy"],
    "04_critique_diversity": ["curves", "critique", "passk"],
    "05_tail_narrowing": ["eval_solved", "eval_pass1", "pool_contributed", "data_share", "passk", "overall"],
    "06_forking_tokens": ["entropy_hist", "training"],
    "07_critique_information": ["critic", "refinement", "refinement_curves", "compare_passk"],
    "08_dual_failure": ["budget", "train_vs_test", "across", "rlsf"],
}
#: Empty panels the tiny root is expected to have: its 3-step SFT policy solves nothing, so
#: self-training keeps no data and the data-share panel has nothing to draw.
EXPECTED_NO_DATA = {"05_tail_narrowing": ["share of the training data", "self_train/eval/distinct_correct"],
                    # distinct correct solutions per solved problem: NaN, no eval problem is solved.
                    "04_critique_diversity": ["eval/distinct_correct"],
                    # the AUROC of confidence vs the verifier: NaN while every rollout is wrong.
                    "08_dual_failure": ["reward/confidence_auroc"]}

# ----------------------------------------------------------------------------- a tiny run root

#: Shared by every run: countdown levels 1-2. Shapes are chosen so that the runs share compiled
#: programs (through the persistent compilation cache of the build process): sft_refine_every > sft.steps
#: gives every model the same max_seq_len (critique buckets included) without a second SFT program; every
#: RL run but Critique-GRPO's samples 8 prompts x 2 like the evaluation.
_BASE = {"task.difficulties": (1, 2), "task.n_train": 32, "sampling.max_new_tokens": 48, "sft.steps": 0,
         "critique.prompt_buckets": (72,), "critique.refine_buckets": (128,), "critique.sft_refine_every": 1000,
         "rl.group_size": 2, "rl.loss.name": "ppo", "rl.loss.ref_kl_coef": 0.0, "rl.steps": 4, "eval.every": 2,
         "checkpoint.every": 100, "checkpoint.async_save": False}
_PLAN_HINT = {"critique.type": "plan_hint", "rl.loss.name": "critique_grpo"}
#: sweep -> [(label, seed, entry, overrides)] (the real sweeps: configs/sweeps/*.py). A run whose overrides
#: equal an earlier one's is a copy of it (critique_collapse's grpo is the entropy sweep's grpo_s0).
_SWEEPS = {
    "entropy": [("grpo", 0, "train", {}), ("grpo", 1, "train", {}),
                ("forking_top20", 0, "train", {"rl.loss.forking_rho": 0.2}),
                ("clip_cov", 0, "train", {"rl.loss.name": "clip_cov"})],
    "critique_collapse": [("grpo", 0, "train", {}),
                          ("resample", 0, "train", {"critique.type": "resample", "critique.scope": "all_wrong"}),
                          # G = 3: its held-out critique evaluation keeps G - 1 = 2 samples per problem,
                          # enough for the policy's own leave-one-out pass@1 (notebook 07)
                          ("cg_plan_hint", 0, "train", _PLAN_HINT | {"critique.scope": "all_wrong", "rl.group_size": 3,
                                                                     "rl.minibatches": 1})],
    "self_train": [("st_none", 0, "self_train", {}), ("st_plan_hint", 0, "self_train", _PLAN_HINT)],
    "rlsf": [("rlsf", 0, "train", {"rl.rewards": "confidence"})],
}
#: Budget sweeps (``evaluate --budgets``) into ``root/test_time/<name>``: (name, run, which policy).
#: A ``<sweep>.<run>`` name is a run of another sweep, compared with that sweep's GRPO.
_TEST_TIME = [("sft", "sft", "sft"), ("grpo_s0", "entropy/grpo_s0", "final"), ("grpo_s1", "entropy/grpo_s1", "final"),
              ("critique_collapse.grpo_s0", "critique_collapse/grpo_s0", "final"),
              ("critique_collapse.cg_plan_hint_s0", "critique_collapse/cg_plan_hint_s0", "final")]
#: Runs of the entropy sweep evaluated across training (``evaluate --which=all``) into ``root/across/<run>``.
_ACROSS = ("grpo_s0", "grpo_s1")
#: A tiny critic (``root/critic``), evaluated twice.
_CRITIC = {"critic.preset": "tiny", "critic.steps": 4, "critic.batch_size": 8, "critic.warmup_steps": 0,
           "critic.log_every": 1, "critic.eval_every": 2, "critic.eval_n_problems": 4, "critic.eval_batch": 8}
_SELF_TRAIN = dict(iterations=2, pool_size=16, samples_per_problem=2, batch_prompts=8, sft_steps=2, sft_batch_size=8,
                   lr=1e-2, warmup_steps=0)
#: Notebook parameters for the tiny root: sampling shapes equal to the evaluation's (compiled once).
#: SFT_RUN: the tiny root's entropy sweep starts from root/sft (scripts/reproduce.sh: root/sft_mini).
NOTEBOOK_PARAMS = {"PASS_K": 2, "COV_PROMPTS": 8, "N_PROBLEMS": 8, "GROUP": 2, "MIN_COUNT": 2, "WINDOW": 2,
                   "COMPARE_SWEEP": "critique_collapse", "BASELINE": "grpo", "SFT_RUN": "sft",
                   "GATE": "sft/gate", "SWEEPS": ("critique_collapse",)}


def _config(tmp, overrides):
    c = tiny_config(tmp, **{k: v for k, v in overrides.items() if not k.startswith("self_train.")})
    c.unlock()
    c.self_train.update({k.split(".", 1)[1]: v for k, v in overrides.items() if k.startswith("self_train.")})
    c.lock()
    return c


def build_tiny_root(root: Path) -> None:
    """``root/sft`` (SFT only) with its critique gate in ``root/sft/gate``, ``root/critic``, the sweeps
    ``entropy``, ``critique_collapse``, ``self_train``, ``rlsf`` from the SFT policy, each with the
    ``manifest.json`` and ``done.json`` files scripts/sweep.py writes, ``root/test_time``: budget
    sweeps of the SFT policy and the entropy sweep's GRPO runs, and ``root/across``: two of those
    runs evaluated across training."""
    train(_config(root, _BASE | {"rl.steps": 0}), str(root / "sft"))
    train_critic(_config(root, _BASE | _CRITIC), str(root / "critic"))
    done = {}  # overrides -> the run directory that ran them
    for sweep, runs in _SWEEPS.items():
        listed = []
        for label, seed, entry, extra in runs:
            name = f"{label}_s{seed}"
            overrides = _BASE | {"init_from": str(root / "sft"), "seed": seed} | extra
            if entry == "self_train":
                overrides |= {f"self_train.{k}": v for k, v in _SELF_TRAIN.items()}
            workdir = root / sweep / name
            same = repr(sorted(overrides.items())) + entry
            if same in done:
                shutil.copytree(done[same], workdir)
            else:
                (train if entry == "train" else self_train)(_config(root, overrides), str(workdir))
                (workdir / "done.json").write_text("{}")
                done[same] = workdir
            listed.append(dict(name=name, label=label, group=label, seed=seed, params={}, entry=entry,
                               overrides={k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()},
                               workdir=name))
        (root / sweep / "manifest.json").write_text(json.dumps({"sweep": sweep, "runs": listed}, indent=1))
    # The budget sweeps, as evaluate --budgets writes them, with shapes the runs' evaluation compiled
    # (8 problems x 2 samples; budget 48 = sampling.max_new_tokens).
    settings = EvalSettings(source="", split="test", n_problems=8, samples=2, temperature=1.0, seed=0, batch_prompts=8)
    sft = load_policy(root / "sft", "sft")  # its critique gate (notebook 04), on the same problems
    gate = critique_gate(sft.run, sft.params, ["plan_hint", "resample"], eval_problems(sft.run, settings))
    write_gate(str(root / "sft" / "gate"), gate, sft.source)
    shared = sft.run
    for name, workdir, which in _TEST_TIME:
        policy = load_policy(root / workdir, which, run=shared)
        shared, out = policy.run, str(root / "test_time" / name)
        one = dataclasses.replace(settings, source=policy.source)
        evaluate_policy(policy.run, policy.params, out, one)
        budget_sweep(policy.run, policy.params, out, one, (24, 48), (1, 2))
    for name in _ACROSS:  # every policy of these runs (the SFT policy they started from, their last step)
        workdir = str(root / "entropy" / name)
        evaluate_across(workdir, resolve_which(workdir, ["all"]), str(root / "across" / name), settings, (24, 48),
                        (1, 2), run=shared)


def build_and_execute(tmp: Path) -> None:
    """``tmp/root`` (the tiny root), then every notebook executed against it into ``tmp/out``; the
    notebooks written and the runner's progress lines go to ``tmp/executed.json``."""
    build_tiny_root(tmp / "root")
    lines = []
    written = notebooks.run_notebooks(tmp / "root", tmp / "out", params=NOTEBOOK_PARAMS, log=lines.append)
    (tmp / "executed.json").write_text(json.dumps({"written": [str(p) for p in written], "lines": lines}))


if __name__ == "__main__":  # the background process: python tests/test_notebooks.py TMP
    build_and_execute(Path(sys.argv[1]))


# ----------------------------------------------------------------------------- the notebooks on it


BACKGROUND_FIXTURE = "executed"


def start_background(tmp_path_factory):
    """The tiny root built and the notebooks executed in one separate process, started by conftest
    when the tests are collected (it runs while the other tests do).

    The process and the notebook kernels share a persistent compilation cache, one CPU device and
    unoptimised XLA code generation: every program is compiled once (the runs and the notebooks'
    samplers have the same shapes) and compiles fast; the programs are tiny."""
    from conftest import FAST_COMPILE  # not at the top: the process itself must not import conftest (8 devices)

    tmp = tmp_path_factory.mktemp("notebooks")
    env = dict(os.environ, CRITIQUE_JAX_CACHE=str(tmp / "cache"), JAX_PLATFORMS="cpu",
               XLA_FLAGS=FAST_COMPILE,
               JAX_COMPILATION_CACHE_DIR=str(tmp / "jax_cache"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    with open(tmp / "build.log", "w") as log:
        proc = subprocess.Popen([sys.executable, __file__, str(tmp)], env=env, stdout=log, stderr=subprocess.STDOUT)
    return {"procs": [proc], "tmp": tmp}


@pytest.fixture(scope="module")
def executed(background):
    """The background process's notebooks: (out folder, notebooks written, the runner's lines)."""
    job = background(sys.modules[__name__])
    proc, tmp = job["procs"][0], job["tmp"]
    proc.wait()
    assert proc.returncode == 0, f"building the tiny root or running the notebooks failed:\n" \
                                 f"{(tmp / 'build.log').read_text()[-4000:]}"
    result = json.loads((tmp / "executed.json").read_text())
    return tmp / "out", [Path(p) for p in result["written"]], result["lines"]


def _outputs(nb, kind):
    """Text of the notebook's stream outputs named ``kind`` (stdout/stderr), per cell index."""
    return {i: "".join(o.text for o in c.get("outputs", []) if o.output_type == "stream" and o.name == kind)
            for i, c in enumerate(nb.cells) if c.cell_type == "code"}


def test_every_notebook_runs_writes_its_figures_and_reports(executed):
    out, written, lines = executed
    assert [p.stem for p in written] == list(FIGURES)
    assert len(lines) == len(FIGURES) and all(": ok in " in line for line in lines)
    for name, figures in FIGURES.items():
        for fig in figures:
            png = out / "figures" / f"{name}_{fig}.png"
            assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
        nb = nbformat.read(out / f"{name}.ipynb", as_version=4)
        injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
        assert len(injected) == 1 and "ROOT = '../root'" in injected[0].source, name
        # The closing "what the runs show" cell prints its computed summary.
        assert _outputs(nb, "stdout")[len(nb.cells) - 1].strip(), name
        # Every figure panel had data (a renamed metric would leave one empty), except the expected ones.
        for text in _outputs(nb, "stderr").values():
            for line in text.splitlines():
                if "no data:" in line:
                    what = line.split("no data:", 1)[1].strip()
                    assert what in EXPECTED_NO_DATA.get(name, []), f"{name}: {line}"


def test_runner_names_the_failing_notebook_and_cell(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# t"), nbformat.v4.new_code_cell("ROOT = 'x'"),
                                         nbformat.v4.new_code_cell("print(ROOT)"),
                                         nbformat.v4.new_code_cell("raise ValueError('boom ' + ROOT)")])
    nb.cells[1].metadata["tags"] = ["parameters"]
    nbformat.write(nb, src / "07_fails.ipynb")
    (tmp_path / "r").mkdir()
    with pytest.raises(notebooks.NotebookError, match=r"07_fails.ipynb: cell 4 failed: ValueError: boom \.\./r"):
        notebooks.run_notebooks(tmp_path / "r", tmp_path / "out", source_dir=src, log=lambda line: None)
    executed_nb = nbformat.read(tmp_path / "out" / "07_fails.ipynb", as_version=4)  # written with the error
    assert executed_nb.cells[3].outputs[0].text == "../r\n"
    assert executed_nb.cells[4].outputs[0].output_type == "error"
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        notebooks.run_notebooks(tmp_path / "missing", tmp_path / "out", source_dir=src)


def test_notebook_selection_and_parameter_injection(tmp_path):
    for name in ("01_a", "02_b", "10_c"):
        nbformat.write(nbformat.v4.new_notebook(), tmp_path / f"{name}.ipynb")
    (tmp_path / "notes.ipynb").write_text("{}")
    assert [p.stem for p in notebooks.notebook_paths(tmp_path)] == ["01_a", "02_b", "10_c"]
    assert [p.stem for p in notebooks.notebook_paths(tmp_path, ["10", "01_a", "01"])] == ["01_a", "10_c"]
    with pytest.raises(ValueError, match=r"--only '03' matches no notebook .*\['01_a', '02_b', '10_c'\]"):
        notebooks.notebook_paths(tmp_path, ["03"])
    assert {p.stem for p in notebooks.notebook_paths()} == set(FIGURES)  # the repository's notebooks

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import x"), nbformat.v4.new_code_cell("A = 1"),
                                         nbformat.v4.new_code_cell("print(A)")])
    nb.cells[1].metadata["tags"] = ["parameters"]
    once = notebooks.inject_parameters(nb, {"A": 2, "ROOT": "../r"})
    assert [c.source for c in once.cells] == ["import x", "A = 1", "# Parameters injected by scripts/run_notebooks.py\n"
                                              "A = 2\nROOT = '../r'", "print(A)"]
    again = notebooks.inject_parameters(once, {"A": 3})  # replaces the earlier injection
    assert [c.source for c in again.cells][2:] == ["# Parameters injected by scripts/run_notebooks.py\nA = 3", "print(A)"]
    with pytest.raises(ValueError, match="no cell tagged 'parameters'"):
        notebooks.inject_parameters(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("A = 1")]), {"A": 2})


# ----------------------------------------------------------------------------- sweeps on hand-written directories


def _write_run(workdir, rows, done=True):
    with MetricsWriter(workdir, tensorboard=False) as w:
        for row in rows:
            w.write(row["step"], {k: v for k, v in row.items() if k != "step"})
    if done:
        (workdir / "done.json").write_text("{}")


def _manifest(sweep_dir, runs):
    entries = [dict(name=n, label=lab, seed=s, entry="train", overrides={"seed": s}, workdir=n, group=lab)
               for n, lab, s in runs]
    (sweep_dir / "manifest.json").write_text(json.dumps({"sweep": sweep_dir.name, "runs": entries}))


def test_read_sweep_groups_runs_and_reports_missing(tmp_path):
    sweep_dir = tmp_path / "entropy"
    _write_run(sweep_dir / "b_s0", [{"step": 1, "train/entropy": 0.5}])
    _write_run(sweep_dir / "a_s1", [{"step": 1, "train/entropy": 0.3}, {"step": 2, "train/entropy": float("nan")}])
    _write_run(sweep_dir / "a_s0", [{"step": 1, "train/entropy": 0.4}], done=False)
    _manifest(sweep_dir, [("b_s0", "b", 0), ("a_s1", "a", 1), ("a_s0", "a", 0), ("a_s2", "a", 2)])
    with pytest.raises(FileNotFoundError, match=r"run a_s2 of .*manifest.json: .*a_s2/metrics.jsonl is missing"):
        sweeps.read_sweep(sweep_dir)
    sweep = sweeps.read_sweep(sweep_dir, skip_missing=True)
    assert sweep.name == "entropy" and sweep.missing == ("a_s2",) and sweep.labels == ["b", "a"]
    groups = sweep.groups()
    assert list(groups) == ["b", "a"] and [r.name for r in groups["a"]] == ["a_s0", "a_s1"]
    assert [r.done for r in groups["a"]] == [False, True]
    assert list(sweep.groups(["a", "zzz"])) == ["a"]
    run = groups["a"][1]
    assert run.workdir == (sweep_dir / "a_s1").resolve() and run.overrides == {"seed": 1}
    assert run.has("train/entropy") and not run.has("eval/pass@1")
    steps, values = run.series("train/entropy")  # the NaN at step 2 is not a value
    assert steps.tolist() == [1] and values.tolist() == [0.3]
    assert run.last_row("train/entropy")["step"] == 1
    with pytest.raises(KeyError, match=r"run a_s1 .* has no finite 'eval/pass@1'"):
        run.last_row("eval/pass@1")


@pytest.mark.parametrize("manifest,match", [
    (None, r"manifest.json does not exist: not a sweep directory"),
    ('{"runs": [', r"manifest.json:1: malformed JSON"),
    ('{"runs": {}}', r"expected an object with a list 'runs'"),
    ('{"runs": [{"name": "x", "label": "a", "seed": 0, "entry": "train", "overrides": {}}]}',
     r"runs\[0\] \(x\) has no 'workdir'"),
    ('{"runs": [{"name": "x", "label": "a", "seed": "0", "entry": "train", "overrides": {}, "workdir": "x"}]}',
     r"runs\[0\] \(x\) seed='0'; expected a int"),
    ('{"runs": [3]}', r"runs\[0\] is a int; expected an object"),
])
def test_malformed_manifests_name_the_file(tmp_path, manifest, match):
    if manifest is not None:
        (tmp_path / "manifest.json").write_text(manifest)
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        sweeps.read_sweep(tmp_path)


def _record(name, rows, label="a", seed=0):
    return sweeps.RunRecord(name=name, label=label, seed=seed, entry="train", overrides={}, workdir=Path(name),
                            rows=tuple(rows), done=True)


def test_seed_band_and_stats_match_numpy(np_rng):
    runs, table = [], {}
    for i in range(4):
        steps = np.sort(np_rng.choice(12, size=int(np_rng.integers(3, 12)), replace=False))
        vals = np_rng.normal(size=steps.size)
        runs.append(_record(f"r{i}", [{"step": int(s), "x": float(v)} for s, v in zip(steps, vals)]
                            + [{"step": 20, "y": 1.0}]))
        for s, v in zip(steps, vals):
            table.setdefault(int(s), []).append(v)
    band = sweeps.seed_band(runs, "x")
    assert band.steps.tolist() == sorted(table)
    for j, s in enumerate(band.steps):
        v = np.array(table[int(s)])
        assert band.n[j] == v.size and band.mean[j] == pytest.approx(v.mean(), rel=1e-12)
        if v.size > 1:
            assert band.sd[j] == pytest.approx(np.sqrt(np.sum((v - v.mean()) ** 2) / (v.size - 1)), rel=1e-12)
        else:
            assert math.isnan(band.sd[j])
    with pytest.raises(ValueError, match=r"no run of \['r0', 'r1', 'r2', 'r3'\] has a finite 'z'"):
        sweeps.seed_band(runs, "z")

    a_vals, b_vals = np_rng.normal(1.0, 0.3, 5), np_rng.normal(0.2, 0.5, 3)
    a, b = sweeps.seed_stat(list(a_vals) + [math.nan]), sweeps.seed_stat(b_vals)
    assert (a.n, b.n) == (5, 3) and a.mean == pytest.approx(a_vals.mean()) and a.sd == pytest.approx(a_vals.std(ddof=1))
    d = sweeps.difference(a, b)
    assert d.mean == pytest.approx(a_vals.mean() - b_vals.mean())
    assert d.sd == pytest.approx(math.sqrt(a_vals.var(ddof=1) / 5 + b_vals.var(ddof=1) / 3)) and d.n == 3
    one = sweeps.seed_stat([0.25])
    assert one.n == 1 and math.isnan(one.sd) and math.isnan(sweeps.difference(a, one).sd)
    assert sweeps.seed_stat([math.nan]).n == 0
    assert f"{sweeps.Stat(0.5, 0.25, 3):+.2f}" == "+0.50 ± 0.25" and f"{one}" == "0.250"
    assert f"{sweeps.seed_stat([])}" == "n/a"


def test_budget_sweeps_read_back_by_label_with_seed_bands(tmp_path, np_rng):
    """read_test_time groups <folder>/<policy>/test_time.json by label (the name without _s<seed>);
    budget_band is the mean and sd over a label's reports per budget, NaN values left out."""
    values = {name: np_rng.uniform(0, 0.25, 3) for name in ("grpo_s0", "grpo_s1", "grpo_s2", "sft")}
    values["grpo_s2"][1] = math.nan  # one seed without a value at budget 32
    for name, v in values.items():
        (tmp_path / name).mkdir()
        report = {"budgets": [16, 32, 64], "per_budget": {str(b): {"correct_var": float(x)} for b, x in zip((16, 32, 64), v)}}
        (tmp_path / name / sweeps.TEST_TIME_JSON).write_text(json.dumps(report))
    (tmp_path / "logs").mkdir()  # a folder without a report is not a policy
    got = sweeps.read_test_time(tmp_path)
    assert {label: [n for n, _ in reports] for label, reports in got.items()} == {
        "grpo": ["grpo_s0", "grpo_s1", "grpo_s2"], "sft": ["sft"]}
    band = sweeps.budget_band([rep for _, rep in got["grpo"]], "correct_var")
    assert band.steps.tolist() == [16, 32, 64] and band.n.tolist() == [3, 2, 3]
    for j in range(3):
        v = np.array([values[f"grpo_s{s}"][j] for s in range(3)])
        v = v[np.isfinite(v)]
        assert band.mean[j] == pytest.approx(v.mean(), rel=1e-12) and band.sd[j] == pytest.approx(v.std(ddof=1), rel=1e-12)
    with pytest.raises(ValueError, match="no budget sweep has a finite 'pass@1'"):
        sweeps.budget_band([rep for _, rep in got["grpo"]], "pass@1")
    with pytest.raises(FileNotFoundError, match=r"logs: no <policy>/test_time.json \(written by evaluate --budgets\)"):
        sweeps.read_test_time(tmp_path / "logs")


def test_across_tables_read_back_by_label_with_seed_bands(tmp_path):
    """read_across groups <folder>/<run>/across.json by label; across_band is the mean and sd over
    a label's tables per RL step, NaN left out."""
    rows = {"grpo_s0": [(0, 0.10), (30, 0.04), (60, 0.02)], "grpo_s1": [(0, 0.12), (30, math.nan), (60, 0.04)]}
    for name, values in rows.items():
        (tmp_path / name).mkdir()
        table = {"budgets": [72], "rows": [{"rl_step": s, "correct_var/72": v} for s, v in values]}
        (tmp_path / name / sweeps.ACROSS_JSON).write_text(json.dumps(table))
    got = sweeps.read_across(tmp_path)
    assert list(got) == ["grpo"] and [n for n, _ in got["grpo"]] == ["grpo_s0", "grpo_s1"]
    band = sweeps.across_band([t for _, t in got["grpo"]], "correct_var/72")
    assert band.steps.tolist() == [0, 30, 60] and band.n.tolist() == [2, 1, 2]
    assert band.mean.tolist() == pytest.approx([0.11, 0.04, 0.03]) and band.sd[0] == pytest.approx(np.std([0.1, 0.12], ddof=1))
    with pytest.raises(ValueError, match="no across-training row has a finite 'pass@1'"):
        sweeps.across_band([t for _, t in got["grpo"]], "pass@1")
    with pytest.raises(FileNotFoundError, match=r"no <policy>/across.json \(written by evaluate --which=all\)"):
        sweeps.read_across(tmp_path / "grpo_s0")


def test_run_values_pairs_and_metric_families():
    rows = [{"step": s, "h": 1.0 / s, "r": float(s)} for s in range(1, 6)] + [{"step": 6, "h": 0.1}]
    run = _record("r", rows)
    assert sweeps.run_value(run, "h", "first", 2) == pytest.approx((1 + 0.5) / 2)
    assert sweeps.run_value(run, "r", "last", 3) == pytest.approx(4.0)
    assert math.isnan(sweeps.run_value(run, "missing"))
    with pytest.raises(ValueError, match="which='middle'"):
        sweeps.run_value(run, "h", "middle")
    steps, h, r = run.paired("h", "r")
    assert steps.tolist() == [1, 2, 3, 4, 5] and r.tolist() == [1, 2, 3, 4, 5]
    steps, h, r = sweeps.pooled_pairs([run, run], "h", "r")
    assert steps.size == 10 and h[5] == 1.0

    row = {"step": 3, "eval/pass@1": 0.2, "eval/pass@k/4": 0.5, "eval/pass@k/2": 0.4, "eval/pass@k/8": "x",
           "self_train/eval/pass@k/1": 0.1, "self_train/eval/pass@k/2/level_1": 0.9}
    assert sweeps.pass_at_k_of_row(row) == {1: 0.2, 2: 0.4, 4: 0.5}
    assert sweeps.pass_at_k_of_row(row, "self_train/eval") == {1: 0.1}
    # the last evaluation of each run; only the k both logged
    a = _record("a", [{"step": 1, "eval/pass@1": 0.0}, {"step": 2, "eval/pass@1": 0.2, "eval/pass@k/2": 0.4,
                                                         "eval/pass@k/4": 0.6}, {"step": 3, "h": 1.0}])
    b = _record("b", [{"step": 2, "eval/pass@1": 0.4, "eval/pass@k/2": 0.5}])
    final = sweeps.final_pass_at_k([a, b, run])
    assert list(final) == [1, 2] and final[1].mean == pytest.approx(0.3) and final[2].n == 2
    assert final[2].sd == pytest.approx(np.std([0.4, 0.5], ddof=1))
    level_run = _record("s", [{"step": 0, "p/solved/level_3": 0.1, "p/solved/level_1": 0.5, "p/solved": 0.3,
                               "p/solved/level_2/x": 1.0}])
    assert sweeps.level_keys([level_run], "p/solved") == {1: "p/solved/level_1", 3: "p/solved/level_3"}


def test_markdown_table():
    text = sweeps.markdown_table(["a", "b", "c", "d"], [["x|y", 0.12345, math.nan, sweeps.Stat(1.0, 0.5, 2)]])
    assert text.splitlines() == ["| a | b | c | d |", "|---|---|---|---|", "| x\\|y | 0.123 | n/a | 1.000 ± 0.500 |"]
    with pytest.raises(ValueError, match="a row has 1 cells for 2 columns"):
        sweeps.markdown_table(["a", "b"], [[1]])


# ----------------------------------------------------------------------------- figures


def test_figures_are_built_and_saved(tmp_path, np_rng):
    groups = {"grpo": [_record(f"g{s}", [{"step": t, "train/entropy": float(np_rng.uniform(0.1, 1)),
                                           "eval/pass@1": 0.1 * t} for t in range(6)], seed=s) for s in range(3)],
              "unknown_label": [_record("u", [{"step": t, "train/entropy": 0.5} for t in range(3)])]}
    fig = plots.curves(groups, ["train/entropy", "eval/pass@1"])
    assert isinstance(fig, Figure) and len([a for a in fig.axes if a.get_visible()]) == 2
    ax = fig.axes[0]
    assert len(ax.lines) == 2 and len(ax.collections) == 1  # one band: only grpo has several seeds
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["grpo (n=3)", "unknown_label"]
    with pytest.warns(plots.NoDataWarning, match="no data: train/reward"):
        plots.curves(groups, ["train/reward"])
    path = plots.save_figure(fig, tmp_path / "figs", "01_x", "curves")
    assert path == tmp_path / "figs" / "01_x_curves.png" and path.read_bytes()[:4] == b"\x89PNG"

    h = np_rng.uniform(0.1, 1.0, 20)
    from critique_jax.analysis import early_fit_prediction, fit_entropy_law
    fit = fit_entropy_law(h, -0.3 * np.exp(h) + 0.9)
    assert len(plots.law_fits({"grpo": (h, -0.3 * np.exp(h) + 0.9), "kl_cov": (h, h)}, {"grpo": fit}).axes) == 1
    res = early_fit_prediction(np.arange(20), h, -0.3 * np.exp(h) + 0.9)
    assert len(plots.early_fit({"grpo": (np.arange(20), h)}, {"grpo": res}).axes) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # none of these has an empty panel
        plots.scatter({"grpo": (h, h)}, xlabel="x", ylabel="y", title="t", notes={"grpo": "r = 1"})
        plots.by_bucket({"sft": {0.0: {"mean_cov": 0.0, "n_tokens": 5}, 0.5: {"mean_cov": 0.1, "n_tokens": 3}}})
        plots.pass_at_k({"grpo": {1: sweeps.Stat(0.2, 0.1, 3), 4: sweeps.Stat(0.5, 0.1, 3)}})
        band = sweeps.Band(np.arange(3), np.ones(3), np.full(3, np.nan), np.ones(3, np.int64))
        assert len([a for a in plots.per_level({"st_none": {1: band, 3: band}}, ylabel="y").axes
                    if a.get_visible()]) == 2
        plots.entropy_histogram(*np.histogram(h, 10), 0.5)
        assert len([a for a in plots.band_panels({"pass@1": {"grpo": band}, "x": {"sft": band}}, xlabel="b").axes
                    if a.get_visible()]) == 2
    with pytest.warns(plots.NoDataWarning, match="no data: empty"):
        plots.band_panels({"empty": {}}, xlabel="b")
    assert plots.color("grpo") != plots.color("clip_cov") and plots.color("new") == plots.color("new")


# ----------------------------------------------------------------------------- token statistics


def test_covariance_by_accuracy_matches_loops(np_rng):
    g, b, length = 4, 6, 7
    rewards = np_rng.integers(0, 2, b * g).astype(np.float64)
    cov = np_rng.normal(size=(b * g, length))
    mask = np_rng.uniform(size=(b * g, length)) < 0.7
    out = covariance_by_accuracy(cov, mask, rewards, g)
    expected: dict = {}
    for p in range(b):
        acc = round(float(np.mean(rewards[p * g:(p + 1) * g])), 9)
        e = expected.setdefault(acc, {"values": [], "groups": 0})
        e["groups"] += 1
        for i in range(p * g, (p + 1) * g):
            e["values"] += [cov[i, t] for t in range(length) if mask[i, t]]
    assert list(out) == sorted(expected)
    for acc, e in expected.items():
        assert out[acc]["mean_cov"] == pytest.approx(np.mean(e["values"]), rel=1e-12)
        assert out[acc]["n_tokens"] == len(e["values"]) and out[acc]["n_groups"] == e["groups"]
    with pytest.raises(ValueError, match="do not split into groups of group_size=5"):
        covariance_by_accuracy(cov, mask, rewards, 5)


def test_rollout_covariance_is_the_trainers_formula(np_rng):
    g, b, length = 4, 3, 5
    mask = np.arange(length)[None] < np_rng.integers(1, length + 1, (b * g, 1))
    sample = token_entropy.TokenSample(problems=(None,) * b, group_size=g, tokens=np.zeros((b * g, length), np.int32),
                                       mask=mask, logp=np_rng.normal(-1, 0.5, (b * g, length)).astype(np.float32),
                                       entropy=np.zeros((b * g, length)), texts=[""] * (b * g),
                                       rewards=np.array([1, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 1], np.float32))
    r = sample.rewards.astype(np.float64).reshape(b, g)
    adv = ((r - r.mean(1, keepdims=True)) / (r.std(1, ddof=1, keepdims=True) + 1e-6)).reshape(-1)
    a = np.broadcast_to(adv[:, None], mask.shape)
    lp = sample.logp.astype(np.float64)
    expected = np.where(mask, (lp - lp[mask].mean()) * (a - a[mask].mean()), 0.0)
    np.testing.assert_allclose(token_entropy.rollout_covariance(sample, "grpo"), expected, rtol=1e-4, atol=1e-6)


def test_top_entropy_positions_and_fork_shares(np_rng):
    h = np_rng.uniform(0, 3, (5, 6))
    mask = np_rng.uniform(size=(5, 6)) < 0.8
    ids = np_rng.integers(0, 4, (5, 6))
    top = top_entropy_positions(h, mask, 4)
    valid = sorted(((h[i, j], i, j) for i in range(5) for j in range(6) if mask[i, j]), reverse=True)
    assert top == [(i, j) for _, i, j in valid[:4]]
    assert len(top_entropy_positions(h, np.zeros_like(mask), 3)) == 0
    tau = 1.5
    rows = fork_share_by_token(ids, h, mask, tau, min_count=2)
    for row in rows:
        at = (ids == row["id"]) & mask
        assert row["count"] == at.sum() >= 2
        assert row["fork_share"] == pytest.approx(np.mean(h[at] >= tau))
        assert row["mean_entropy"] == pytest.approx(h[at].mean())
    assert [r["fork_share"] for r in rows] == sorted((r["fork_share"] for r in rows), reverse=True)
    assert {r["id"] for r in rows} == {t for t in range(4) if ((ids == t) & mask).sum() >= 2}
    with pytest.raises(ValueError, match="expected equal shapes"):
        fork_share_by_token(ids[:, :3], h, mask, tau)


def test_load_run_config_round_trips(tmp_path):
    c = config_lib.default_config()
    c.unlock()
    c.rl.loss.name, c.sampling.prompt_buckets, c.rl.loss.forking_rho = "kl_cov", (20, 32), 0.2
    c.lock()
    (tmp_path / "config.json").write_text(c.to_json())
    loaded = load_run_config(tmp_path)
    assert loaded.to_dict() == c.to_dict() and loaded.is_locked
    (tmp_path / "config.json").write_text(json.dumps({"rl": {"bogus": 1}}))
    with pytest.raises(ValueError, match=r"config.json: key rl.bogus=1 does not fit"):
        load_run_config(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        load_run_config(tmp_path / "nowhere")
