"""The evaluate program: a policy (a train run's checkpoint, or a Hugging Face directory) sampled
``n`` times on each of the first problems of a split, and its report
(:mod:`critique_jax.analysis.evaluation`).

Output folder::

    evaluation.json   the settings (source, split, problems, samples, temperature, seed); a
                      re-run with other settings is refused, naming them
    problems.jsonl    one line per evaluated problem, appended chunk by chunk (resumable: a
                      re-run continues after the last whole chunk)
    report.json, report.md, passk.png   the report, written when every problem is done
    budgets/, test_time.*   with ``--budgets``: the test-time budget sweep
                      (:mod:`critique_jax.runs.budget_sweep`)

Sample ``j`` of problem ``i`` (its index in the split) uses the key ``(seed, i, j)``, so an
interrupted and resumed evaluation equals an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, TypeVar

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from critique_jax.analysis.diversity import distinct_correct_solutions  # noqa: E402
from critique_jax.analysis.evaluation import ProblemResult, majority_correct, markdown, report  # noqa: E402
from critique_jax.metrics import Progress  # noqa: E402
from critique_jax.rl import rollout as rollout_lib  # noqa: E402
from critique_jax.runs.run import Run  # noqa: E402
from critique_jax.sampling import SamplerConfig  # noqa: E402
from critique_jax.tasks import Problem  # noqa: E402

SETTINGS, RESULTS = "evaluation.json", "problems.jsonl"
REPORT_JSON, REPORT_MD, PLOT = "report.json", "report.md", "passk.png"
Record = TypeVar("Record")
#: One problem's record from its ``g`` samples: (problem, texts [g], verifier rewards [g],
#: response tokens [g], summed token entropies (nats) [g]) -> record.
MakeRecord = Callable[[Problem, list[str], np.ndarray, np.ndarray, np.ndarray], Record]


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """What is evaluated and how: ``source`` (a description of the policy), ``split`` (train |
    test), ``n_problems`` (0: the whole split), ``samples`` per problem, ``temperature``,
    ``seed``, ``batch_prompts`` (problems per sampling call)."""

    source: str
    split: str
    n_problems: int
    samples: int
    temperature: float
    seed: int
    batch_prompts: int


def check_settings(out: str, settings: EvalSettings) -> None:
    """Writes ``settings`` to ``out/evaluation.json``, or refuses (naming them) settings that differ
    from the ones there."""
    path = os.path.join(out, SETTINGS)
    mine = dataclasses.asdict(settings)
    if os.path.exists(path):
        with open(path) as f:
            theirs = json.load(f)
        differ = [f"{k}={mine[k]!r} (the folder has {theirs.get(k)!r})" for k in mine if theirs.get(k) != mine[k]]
        if differ:
            raise ValueError(f"{path}: this evaluation differs in {'; '.join(differ)}; use another --out")
        return
    with open(path, "w") as f:
        json.dump(mine, f, indent=1)


def _done(path: str, uids: list[str], chunk: int, parse: Callable[[dict], Record]) -> list[Record]:
    """The records already in the JSONL file ``path`` (``parse``: a line's dict to its record),
    cut to whole chunks (a crash mid-chunk leaves a partial one, sampled again); each must be
    the problem at its position."""
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(parse(json.loads(line)))
            except (json.JSONDecodeError, TypeError):
                break  # a line cut by a crash: it and what follows are sampled again
    rows = rows[:len(rows) // chunk * chunk] if len(rows) < len(uids) else rows[:len(uids)]
    for i, r in enumerate(rows):
        if r.uid != uids[i]:
            raise ValueError(f"{path} line {i + 1}: problem {r.uid!r}, expected {uids[i]!r} (another split or data)")
    with open(path, "w") as f:
        f.writelines(json.dumps(dataclasses.asdict(r)) + "\n" for r in rows)
    return rows


def eval_problems(run: Run, settings: EvalSettings) -> list[Problem]:
    """The first ``settings.n_problems`` problems of ``settings.split`` (0: all of them)."""
    source = {"train": run.train, "test": run.test}[settings.split]
    n = min(settings.n_problems or len(source), len(source))
    return [source[i].problem for i in range(n)]


def sample_records(run: Run, params: nnx.State, settings: EvalSettings, problems: list[Problem], path: str,
                   record: MakeRecord, parse: Callable[[dict], Record],
                   sampler: SamplerConfig | None = None) -> list[Record]:
    """``settings.samples`` samples of each problem with ``sampler`` (default: the run's), one
    ``record`` per problem appended to the JSONL file ``path`` chunk by chunk
    (``settings.batch_prompts`` problems, flushed and synced); a re-run keeps the whole chunks
    there and samples the rest (``parse``: a line's dict to its record)."""
    g, bp, n = settings.samples, settings.batch_prompts, len(problems)
    results = _done(path, [p.uid for p in problems], bp, parse)
    progress = Progress(total=n, initial=len(results), enabled=run.config.log.progress, keys=("pass@1",))
    right = []
    with open(path, "a") as f:
        for start in range(len(results), n, bp):
            chunk = problems[start:start + bp]
            prompts = [run.prompts.solve(p.question) for p in chunk]
            gen = rollout_lib.sample_chunked(run, (run.graphdef, params), prompts,
                                             run.config.sampling.prompt_buckets, g, settings.temperature, bp,
                                             lambda _: settings.seed, sampler=sampler, global_ids=True,
                                             first_id=start)
            rewards = rollout_lib.score(run.task, chunk, gen.texts, g).reshape(len(chunk), g)
            new = [record(p, gen.texts[i * g:(i + 1) * g], rewards[i], gen.lengths[i * g:(i + 1) * g],
                          gen.entropy_sums[i * g:(i + 1) * g]) for i, p in enumerate(chunk)]
            f.writelines(json.dumps(dataclasses.asdict(r)) + "\n" for r in new)
            f.flush()
            os.fsync(f.fileno())
            results += new
            right.append(rewards >= 1)
            progress.update(len(results), {"pass@1": float(np.concatenate(right).mean())})  # of this call's samples
    progress.close()
    return results


def evaluate_policy(run: Run, params: nnx.State, out: str, settings: EvalSettings) -> dict[str, Any]:
    """Evaluates ``params`` (the model of ``run``) as ``settings`` say, writing ``out`` (module
    docstring); returns the report."""
    os.makedirs(out, exist_ok=True)
    check_settings(out, settings)
    task = run.task

    def result(p: Problem, texts: list[str], rewards: np.ndarray, lengths: np.ndarray,
               entropy_sums: np.ndarray) -> ProblemResult:
        return ProblemResult(
            uid=p.uid, difficulty=int(p.difficulty), n=len(texts), correct=int((rewards >= 1).sum()),
            majority_correct=(majority_correct([task.extract_answer(t) for t in texts], list(rewards))
                              if task.answer_graded else None),
            distinct=distinct_correct_solutions(task, p, texts), tokens=float(lengths.sum()),
            entropy_sum=float(entropy_sums.sum()))

    results = sample_records(run, params, settings, eval_problems(run, settings), os.path.join(out, RESULTS),
                             result, lambda d: ProblemResult(**d))
    rep = report(results) | {"source": settings.source, "split": settings.split}
    write_report(out, (REPORT_JSON, REPORT_MD, PLOT), rep, markdown(rep, f"Evaluation of {settings.source} "
                 f"({settings.split})"), lambda path: plot_passk(rep, path, settings.source))
    return rep


def write_report(out: str, names: tuple[str, str, str], rep: dict[str, Any], md: str,
                 plot: Callable[[str], None]) -> None:
    """``rep`` as JSON, ``md`` and the figure ``plot(path)`` draws, in ``out`` under ``names``
    (the JSON, Markdown and PNG file names)."""
    with open(os.path.join(out, names[0]), "w") as f:
        json.dump(rep, f, indent=1)
    with open(os.path.join(out, names[1]), "w") as f:
        f.write(md)
    plot(os.path.join(out, names[2]))


def plot_passk(rep: dict[str, Any], path: str, title: str) -> None:
    """pass@k against k, overall and per level."""
    n = rep["samples_per_problem"]
    ks = np.arange(1, n + 1)
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.plot(ks, [rep[f"pass@{k}"] for k in ks], "o-", color="k", label="all")
    for i, (level, block) in enumerate(rep["per_level"].items()):
        ax.plot(ks, [block[f"pass@{k}"] for k in ks], ".--", color=f"C{i}", label=f"level {level}")
    ax.set(xscale="log", xlabel="k (samples)", ylabel="pass@k", ylim=(0, 1), title=title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def config_policy(config: Any, out: str) -> tuple[Run, nnx.State, str]:
    """The run set-up and policy of an evaluation config: the Hugging Face checkpoint of
    ``model.hf_dir``, or the SFT policy of the train run ``init_from``."""
    from critique_jax.rl import policy_init
    from critique_jax.runs import roles
    from critique_jax.runs.run import setup

    if not config.model.hf_dir and not config.init_from:
        raise ValueError("config: evaluating a config needs model.hf_dir (a Hugging Face directory) or init_from "
                         "(a train run); to evaluate a run's own checkpoints use --run")
    run = setup(config, out, "evaluate")
    if config.model.hf_dir:
        params = policy_init.pretrained_params(config.model.hf_dir, run.model_cfg, run.mesh, run.param_sh)
        return run, params, config.model.hf_dir
    policy_dir = roles.check_policy_run(config, config.init_from, "init_from")
    return run, roles.restore_policy(run, policy_dir), policy_dir
