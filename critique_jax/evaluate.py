"""Evaluate a policy without training: pass@k for k = 1..n, majority vote, per-level accuracy,
response length, token entropy and distinct correct solutions, as JSON, Markdown and a plot.

    python -m critique_jax.evaluate --run=runs/grpo --out=runs/grpo/eval_test      # its latest checkpoint
    python -m critique_jax.evaluate --run=runs/grpo --which=sft --samples=16 --out=runs/grpo/eval_sft
    python -m critique_jax.evaluate --config=configs/gsm8k.py --config.model.hf_dir=/models/qwen \\
        --out=runs/qwen_gsm8k_eval
    python -m critique_jax.evaluate --run=runs/grpo --samples=8 --budgets=16,32,64 --out=runs/grpo/eval_budgets

``--budgets`` adds the test-time budget sweep (:mod:`critique_jax.runs.budget_sweep`): every
problem sampled ``--samples`` times at each max-new-tokens value, maj@k / pass@k for the
``--sample_counts`` k, correctness variance and answer entropy per budget (``test_time.*``).

Re-running the same command continues an interrupted evaluation (see
:mod:`critique_jax.runs.evaluation_run`). Defaults come from the run's config: samples =
``eval.group_size``, temperature = ``sampling.temperature``, problems per call =
``eval.batch_prompts``; ``--n_problems=0`` evaluates the whole split.
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from critique_jax import cli

RUN = flags.DEFINE_string("run", None, "A train run directory whose policy is evaluated (with --which).")
WHICH = flags.DEFINE_string("which", "final", "With --run: 'final' (latest checkpoint), 'sft' or a step number.")
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
VERBOSE = cli.define_verbose()


def main(argv: list[str]) -> None:
    if (RUN.value is None) == (CONFIG.value is None):
        raise app.UsageError("give exactly one of --run (a train run) or --config (with model.hf_dir or init_from)")
    budgets, counts = _ints(BUDGETS), _ints(SAMPLE_COUNTS)
    if counts and not budgets:
        raise ValueError("--sample_counts without --budgets: the sample counts are the budget sweep's; give --budgets")
    from critique_jax.runs.policies import load_run_config

    cli.start(argv, CONFIG.value if CONFIG.value is not None else load_run_config(RUN.value))
    from critique_jax.runs.budget_sweep import budget_sweep, check_sweep
    from critique_jax.runs.evaluation_run import EvalSettings, config_policy, evaluate_policy
    from critique_jax.runs.policies import load_policy

    if CONFIG.value is None:
        which = int(WHICH.value) if WHICH.value.isdigit() else WHICH.value
        policy = load_policy(RUN.value, which)
        run, params, source = policy.run, policy.params, policy.source
    else:
        run, params, source = config_policy(CONFIG.value, OUT.value)
    c = run.config
    settings = EvalSettings(source=source, split=SPLIT.value, n_problems=N_PROBLEMS.value,
                            samples=SAMPLES.value or c.eval.group_size,
                            temperature=c.sampling.temperature if TEMPERATURE.value is None else TEMPERATURE.value,
                            seed=SEED.value, batch_prompts=c.eval.batch_prompts)
    if settings.samples < 1:
        raise ValueError(f"--samples={settings.samples}: expected >= 1")
    if settings.n_problems < 0:
        raise ValueError(f"--n_problems={settings.n_problems}: expected >= 0 (0 = the whole split)")
    if settings.temperature < 0:
        raise ValueError(f"--temperature={settings.temperature}: expected >= 0 (0 = greedy)")
    if budgets:  # checked before the main evaluation samples anything
        counts = counts or [2 ** i for i in range(settings.samples.bit_length())]
        check_sweep(run, settings.samples, budgets, counts)
    rep = evaluate_policy(run, params, OUT.value, settings)
    n = rep["samples_per_problem"]
    print(f"{source}: pass@1 {rep['pass@1']:.4f}, pass@{n} {rep[f'pass@{n}']:.4f}, maj@{n} {rep[f'maj@{n}']:.4f} "
          f"on {int(rep['n_problems'])} {settings.split} problems; report in {OUT.value}")
    if budgets:
        sweep = budget_sweep(run, params, OUT.value, settings, budgets, counts)
        print("budget sweep: pass@1 " + ", ".join(f"{t['pass@1']:.4f} at {b}" for b, t in sweep["per_budget"].items())
              + f" new tokens; report in {OUT.value}/test_time.md")


def _ints(flag: flags.FlagHolder) -> list[int]:
    """A list flag's values as whole numbers (an error naming the flag otherwise)."""
    try:
        return [int(v) for v in flag.value]
    except ValueError:
        raise ValueError(f"--{flag.name}={','.join(flag.value)}: expected whole numbers separated by commas") from None


if __name__ == "__main__":
    cli.run(main, VERBOSE)
