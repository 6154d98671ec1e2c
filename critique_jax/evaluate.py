"""Evaluate a policy without training: pass@k for k = 1..n, majority vote, per-level accuracy,
response length, token entropy and distinct correct solutions, as JSON, Markdown and a plot.

    python -m critique_jax.evaluate --run=runs/grpo --out=runs/grpo/eval_test      # its latest checkpoint
    python -m critique_jax.evaluate --run=runs/grpo --which=sft --samples=16 --out=runs/grpo/eval_sft
    python -m critique_jax.evaluate --config=configs/gsm8k.py --config.model.hf_dir=/models/qwen \\
        --out=runs/qwen_gsm8k_eval
    python -m critique_jax.evaluate --run=runs/grpo --samples=8 --budgets=16,32,64 --out=runs/grpo/eval_budgets

``--which=all`` (the SFT policy, for a run with ``init_from`` the one it started from, and every
saved checkpoint) or a comma list (``--which=sft,50,100``)
evaluates several policies of the run, each into ``OUT/<which>/`` as a single evaluation writes
``OUT``, then writes ``across.*``: one row per policy with the run's training entropy near it
(:mod:`critique_jax.runs.across_run`)::

    python -m critique_jax.evaluate --run=runs/grpo --which=all --samples=8 --budgets=16,32,64 --out=runs/grpo/eval_all

``--critique_gate=plan_hint,plan,rule_step,indicative,resample`` runs the critique gate instead
(:mod:`critique_jax.runs.gate`): per critique type, refinement success on the policy's failed
held-out responses against its own pass@1 on those prompts (``gate.json``, ``gate.md``)::

    python -m critique_jax.evaluate --run=runs/ccl_sft --which=sft --critique_gate=plan_hint,plan,indicative,resample \
        --n_problems=128 --out=runs/ccl_sft/gate

``--budgets`` adds the test-time budget sweep (:mod:`critique_jax.runs.budget_sweep`): every
problem sampled ``--samples`` times at each max-new-tokens value, maj@k / pass@k for the
``--sample_counts`` k, correctness variance and answer entropy per budget (``test_time.*``).

Re-running the same command continues an interrupted evaluation (see
:mod:`critique_jax.runs.evaluation_run`). Defaults come from the run's config: samples =
``eval.group_size``, temperature = ``sampling.temperature``, problems per call =
``eval.batch_prompts``; ``--n_problems=0`` evaluates the whole split.
"""

from __future__ import annotations

import dataclasses

from absl import app, flags
from ml_collections import config_flags

from critique_jax import cli, storage

RUN = flags.DEFINE_string("run", None, "A train run directory whose policy is evaluated (with --which).")
WHICH = flags.DEFINE_string("which", "final", "With --run: 'final' (latest checkpoint), 'sft' (with init_from: the "
                            "policy it started from) or a step number; "
                            "'all' or a comma list (sft,50,100): several policies, each into OUT/<which>/, and "
                            "the across-training table across.*.")
CONFIG = config_flags.DEFINE_config_file("config", None, "Instead of --run: a config whose model.hf_dir or "
                                         "init_from is the policy.", lock_config=True)
OUT = flags.DEFINE_string("out", None, "The evaluation's folder (report, per-problem results).", required=True)
SPLIT = flags.DEFINE_enum("split", "test", ["test", "train"], "Which split's problems.")
N_PROBLEMS = flags.DEFINE_integer("n_problems", 0, "How many problems (the first ones); 0: the whole split.")
SAMPLES = flags.DEFINE_integer("samples", None, "Samples per problem (default: eval.group_size).")
TEMPERATURE = flags.DEFINE_float("temperature", None, "Sampling temperature (default: sampling.temperature).")
SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
BUDGETS = flags.DEFINE_list("budgets", [], "Test-time budget sweep (off when empty): max-new-tokens values, "
                            "e.g. 16,32,64, each sampled --samples times per problem (test_time.*).")
SAMPLE_COUNTS = flags.DEFINE_list("sample_counts", [], "With --budgets: the sample counts k of maj@k and pass@k "
                                  "(default: 1, 2, 4, ... up to --samples).")
GATE = flags.DEFINE_list("critique_gate", [], "Instead of the evaluation: the critique gate of these critique types "
                         "(e.g. plan_hint,plan,rule_step,indicative,resample) on --n_problems problems of --split "
                         "(gate.*).")
VERBOSE = cli.define_verbose()


def main(argv: list[str]) -> None:
    if (RUN.value is None) == (CONFIG.value is None):
        raise app.UsageError("give exactly one of --run (a train run) or --config (with model.hf_dir or init_from)")
    budgets, counts = _ints(BUDGETS), _ints(SAMPLE_COUNTS)
    if counts and not budgets:
        raise ValueError("--sample_counts without --budgets: the sample counts are the budget sweep's; give --budgets")
    if storage.is_remote(OUT.value):  # the run read may be a URL; the results are local files
        raise ValueError(f"--out={OUT.value}: the evaluation's folder must be a local folder (copy it to a bucket "
                         "afterwards); --run may be a gs:// run directory")
    which = parse_which(WHICH.value) if CONFIG.value is None else []
    if GATE.value and (budgets or len(which) > 1 or which == ["all"]):
        raise ValueError("--critique_gate gates one policy and runs alone: drop --budgets and give one --which")
    from critique_jax.runs.policies import load_run_config

    c = cli.start(argv, CONFIG.value if CONFIG.value is not None else load_run_config(RUN.value))
    from critique_jax.runs.across_run import evaluate_across, resolve_which
    from critique_jax.runs.budget_sweep import budget_sweep, check_sweep
    from critique_jax.runs.evaluation_run import EvalSettings, config_policy, evaluate_policy
    from critique_jax.runs.policies import load_policy

    settings = EvalSettings(source="", split=SPLIT.value, n_problems=N_PROBLEMS.value,
                            samples=SAMPLES.value or c.eval.group_size,
                            temperature=c.sampling.temperature if TEMPERATURE.value is None else TEMPERATURE.value,
                            seed=SEED.value, batch_prompts=c.eval.batch_prompts)
    if settings.samples < 1:
        raise ValueError(f"--samples={settings.samples}: expected >= 1")
    if settings.n_problems < 0:
        raise ValueError(f"--n_problems={settings.n_problems}: expected >= 0 (0 = the whole split)")
    if settings.temperature < 0:
        raise ValueError(f"--temperature={settings.temperature}: expected >= 0 (0 = greedy)")
    counts = counts or [2 ** i for i in range(settings.samples.bit_length())]
    if CONFIG.value is None:
        policies = resolve_which(RUN.value, which)
        if len(which) > 1 or which == ["all"]:
            table = evaluate_across(RUN.value, policies, OUT.value, settings, budgets, counts)
            n = table["samples_per_problem"]
            for r in table["rows"]:
                print(f"{r['which']}: pass@1 {r['pass@1']:.4f}, pass@{n} {r[f'pass@{n}']:.4f}, maj@{n} "
                      f"{r[f'maj@{n}']:.4f}, training entropy {r['train_entropy']:.4f}; in {OUT.value}/{r['which']}")
            print(f"across training: {table['n_problems']} {settings.split} problems; table in {OUT.value}/across.md")
            return
        policy = load_policy(RUN.value, policies[0])
        run, params, source = policy.run, policy.params, policy.source
    else:
        run, params, source = config_policy(CONFIG.value, OUT.value)
    import jax

    jax.set_mesh(run.mesh)  # this process's one mesh (global): the model's activation constraints read it
    settings = dataclasses.replace(settings, source=source)
    if GATE.value:
        from critique_jax.runs.evaluation_run import eval_problems
        from critique_jax.runs.gate import critique_gate, gate_markdown, write_gate

        rows = critique_gate(run, params, GATE.value, eval_problems(run, settings))
        write_gate(OUT.value, rows, source)
        print(gate_markdown(rows, source) + f"gate in {OUT.value}/gate.md")
        return
    if budgets:  # checked before the main evaluation samples anything
        check_sweep(run, settings.samples, budgets, counts)
    rep = evaluate_policy(run, params, OUT.value, settings)
    n = rep["samples_per_problem"]
    print(f"{source}: pass@1 {rep['pass@1']:.4f}, pass@{n} {rep[f'pass@{n}']:.4f}, maj@{n} {rep[f'maj@{n}']:.4f} "
          f"on {int(rep['n_problems'])} {settings.split} problems; report in {OUT.value}")
    if budgets:
        sweep = budget_sweep(run, params, OUT.value, settings, budgets, counts)
        print("budget sweep: pass@1 " + ", ".join(f"{t['pass@1']:.4f} at {b}" for b, t in sweep["per_budget"].items())
              + f" new tokens; report in {OUT.value}/test_time.md")


def parse_which(value: str) -> list[str | int]:
    """``--which``: comma-separated 'all' (alone), 'final', 'sft' or step numbers (a one-line error
    naming the flag otherwise)."""
    items = [w.strip() for w in value.split(",")]
    bad = [w for w in items if w not in ("all", "final", "sft") and not w.isdigit()]
    if bad:
        raise ValueError(f"--which={value}: {bad[0]!r} is not 'all', 'final', 'sft' or a step number")
    if "all" in items and len(items) > 1:
        raise ValueError(f"--which={value}: 'all' already names every policy; give it alone")
    if len(set(items)) != len(items):
        raise ValueError(f"--which={value}: a policy named twice")
    return [int(w) if w.isdigit() else w for w in items]


def _ints(flag: flags.FlagHolder) -> list[int]:
    """A list flag's values as whole numbers (an error naming the flag otherwise)."""
    try:
        return [int(v) for v in flag.value]
    except ValueError:
        raise ValueError(f"--{flag.name}={','.join(flag.value)}: expected whole numbers separated by commas") from None


if __name__ == "__main__":
    cli.run(main, VERBOSE)
