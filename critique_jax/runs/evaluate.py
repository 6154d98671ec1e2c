"""Held-out evaluation of the policy during a train run (``eval/*`` metrics)."""

from __future__ import annotations

import numpy as np
from flax import nnx

from critique_jax.analysis.diversity import distinct_correct_solutions, distinct_per_solved
from critique_jax.analysis.passk import pass_at_k
from critique_jax.critique.loop import RefineSettings, evaluate_refinement
from critique_jax.rl import rollout as rollout_lib
from critique_jax.critique.sources import CritiqueSource
from critique_jax.runs.run import Run


def evaluate(run: Run, params: nnx.State, step: int, source: CritiqueSource | None = None) -> dict[str, float]:
    """Greedy and sampled pass@k on the first ``eval.n_problems`` test problems; logs samples.
    In a run with Critique-GRPO steps, also refinement against resampling on the same problems
    (``eval/critique/*``, see ``evaluate_refinement``; ``source``: the run's critique source).
    An SFT-only run (``rl.steps = 0``) skips it: its
    critique settings may be sized for self-training, which leaves over-long prompts out.

    Sampling keys: greedy ``(seed, problem index)``, sampled ``(seed + 1, problem index, j)``,
    the same at every evaluation (common random numbers across steps).
    """
    c = run.config
    n = min(c.eval.n_problems, len(run.test))
    problems = [run.test[i].problem for i in range(n)]
    g, bp = c.eval.group_size, c.eval.batch_prompts
    prompts, model = [run.prompts.solve(p.question) for p in problems], (run.graphdef, params)
    greedy = rollout_lib.sample_chunked(run, model, prompts, c.sampling.prompt_buckets, 1, 0.0, bp,
                                        lambda _: c.seed, global_ids=True)
    sampled = rollout_lib.sample_chunked(run, model, prompts, c.sampling.prompt_buckets, g, c.sampling.temperature,
                                         bp, lambda _: c.seed + 1, global_ids=True)
    g_rew = rollout_lib.score(run.task, problems, greedy.texts, 1)
    s_rew = rollout_lib.score(run.task, problems, sampled.texts, g).reshape(n, g)
    correct = s_rew.sum(1).astype(np.int64)
    distinct = [distinct_correct_solutions(run.task, p, sampled.texts[i * g:(i + 1) * g])
                for i, p in enumerate(problems)]
    metrics = {"eval/pass@1_greedy": float(np.mean(g_rew)),
               "eval/pass@1": float(pass_at_k(g, correct, 1).mean()),
               "eval/entropy": sampled.entropy,
               "eval/response_len": sampled.n_tokens / (n * g)}
    metrics["eval/distinct_correct"] = distinct_per_solved(correct, distinct)
    for k in range(2, g + 1):  # pass@k for every k = 1..G (pass@1 above)
        metrics[f"eval/pass@k/{k}"] = float(pass_at_k(g, correct, k).mean())
    if source is not None and c.rl.steps > 0:
        metrics |= evaluate_refinement(run, params, source, RefineSettings.from_config(c), problems, step)
    samples = [dict(uid=p.uid, question=p.question, greedy=greedy.texts[i], greedy_reward=float(g_rew[i]),
                    sampled=sampled.texts[i * g], sampled_reward=float(s_rew[i, 0]))
               for i, p in enumerate(problems[:c.eval.n_logged_samples])]
    run.writer.write_samples(step, samples)
    return metrics
