"""Self-training's pure parts: what an iteration keeps as training data from its samples and
refinements, its pool and evaluation metrics (tail narrowing), its batches and seeds, and the
validation of the ``self_train`` section. The program is :mod:`critique_jax.runs.self_train_run`.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import ml_collections
import numpy as np

from critique_jax.analysis.diversity import distinct_per_solved, pass_at_k_curve, solved_share_by_difficulty
from critique_jax.tasks import Problem
from critique_jax.text import Tokenizer


def validate_self_train(config: ml_collections.ConfigDict, shards: int, n_train: int) -> None:
    """Checks the ``self_train`` section; each error names the key.

    shards: batch shards of the mesh (data x fsdp); n_train: problems in the train split.
    """
    s = config.self_train

    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ValueError(f"config {msg}")

    for key in ("iterations", "samples_per_problem", "sft_steps"):
        need(s[key] >= 1, f"self_train.{key}={s[key]}: expected >= 1")
    for key in ("batch_prompts", "sft_batch_size"):
        need(s[key] >= 1 and s[key] % shards == 0,
             f"self_train.{key}={s[key]}: must be a positive multiple of the {shards} batch shards (mesh data x fsdp)")
    need(0 <= s.pool_size <= n_train,
         f"self_train.pool_size={s.pool_size}: expected 0 (all) to the {n_train} train problems (task.n_train)")
    need(config.critique.type != "resample",
         "critique.type='resample' is an RL control (a fresh sample instead of a refinement); self-training "
         "samples every pool problem K times already: use 'none'")
    need(s.max_per_problem >= 0, f"self_train.max_per_problem={s.max_per_problem}: expected >= 0 (0 = no cap)")
    need(s.lr > 0, f"self_train.lr={s.lr}: expected > 0")
    need(s.weight_decay >= 0, f"self_train.weight_decay={s.weight_decay}: expected >= 0")
    need(0 <= s.warmup_steps <= s.sft_steps,
         f"self_train.warmup_steps={s.warmup_steps}: expected between 0 and self_train.sft_steps={s.sft_steps}")



def select_kept(sample_ok: np.ndarray, refine_ok: np.ndarray, sample_texts: Sequence[str],
                refine_texts: Sequence[str], max_per_problem: int = 0,
                dedupe: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Which samples and refinements become training data: ``(keep_sample, keep_refine)``, [P, K] bool.

    sample_ok [P, K] bool: sample ``k`` of problem ``p`` is usable (verified correct, finished,
    fits); refine_ok [P, K] bool: the refinement of (wrong) sample ``k`` is usable; a sample
    and its own refinement cannot both be usable. sample_texts / refine_texts: [P·K] texts,
    problem-major. Per problem the candidates are the usable samples, then the usable
    refinements, each in sample order; ``dedupe`` drops a candidate whose text equals an
    earlier kept one of the same problem; ``max_per_problem > 0`` keeps the first that many.
    """
    sample_ok, refine_ok = np.asarray(sample_ok, bool), np.asarray(refine_ok, bool)
    if sample_ok.ndim != 2 or refine_ok.shape != sample_ok.shape:
        raise ValueError(f"select_kept: sample_ok {sample_ok.shape} and refine_ok {refine_ok.shape} must be equal [P, K]")
    if (sample_ok & refine_ok).any():
        p, k = np.argwhere(sample_ok & refine_ok)[0]
        raise ValueError(f"select_kept: problem {p} sample {k} is usable and so is its refinement; only wrong "
                         "samples are refined")
    n_p, n_k = sample_ok.shape
    for name, texts in (("sample_texts", sample_texts), ("refine_texts", refine_texts)):
        if len(texts) != n_p * n_k:
            raise ValueError(f"select_kept: {name} has {len(texts)} texts; expected P x K = {n_p * n_k}")
    if max_per_problem < 0:
        raise ValueError(f"select_kept: max_per_problem={max_per_problem}: expected >= 0 (0 = no cap)")
    keep = np.zeros((2, n_p, n_k), bool)  # [0]: samples, [1]: refinements
    for p in range(n_p):
        candidates = [(0, k) for k in np.flatnonzero(sample_ok[p])] + [(1, k) for k in np.flatnonzero(refine_ok[p])]
        seen: set[str] = set()
        kept = 0
        for kind, k in candidates:
            if max_per_problem and kept >= max_per_problem:
                break
            text = (sample_texts, refine_texts)[kind][p * n_k + k]
            if dedupe and text in seen:
                continue
            keep[kind, p, k] = True
            seen.add(text)
            kept += 1
    return keep[0], keep[1]


def training_pairs(problems: Sequence[Problem], sample_texts: Sequence[str], refine_texts: Sequence[str],
                   keep_sample: np.ndarray, keep_refine: np.ndarray) -> tuple[list[Problem], list[str]]:
    """The SFT data ``(problems, targets)``: the kept samples, then the kept refinements (each
    a target for the solve prompt of its problem; the critique is not part of it).

    keep_sample / keep_refine: [P, K] bool; sample_texts / refine_texts: [P·K], problem-major.
    """
    k = np.shape(keep_sample)[1]
    owners: list[Problem] = []
    targets: list[str] = []
    for keep, texts in ((keep_sample, sample_texts), (keep_refine, refine_texts)):
        for i in np.flatnonzero(np.asarray(keep).reshape(-1)):
            owners.append(problems[i // k])
            targets.append(texts[i])
    return owners, targets


def level_key(level: int) -> str:
    return f"level_{level}"


def pool_metrics(problems: Sequence[Problem], correct: np.ndarray, refined: np.ndarray, refine_correct: np.ndarray,
                 keep_sample: np.ndarray, keep_refine: np.ndarray, critique: bool) -> dict[str, float]:
    """``self_train/pool/...`` metrics of one iteration's samples of the pool.

    problems [P] (``difficulty`` is the level); correct [P, K] bool: the sample verified;
    refined [P, K]: a (wrong) sample that got a refinement; refine_correct [P, K]: its
    refinement verified; keep_sample / keep_refine [P, K]: :func:`select_kept`'s output.
    Per level (``/level_<d>``) and over all problems (no suffix): ``accuracy`` (share of
    correct samples), ``solved`` (share of problems with >= 1 correct sample), ``contributed``
    (>= 1 kept example), ``rescued`` (no correct sample, >= 1 kept refinement); per level
    ``data_share`` (share of the kept examples from the level; NaN when nothing is kept);
    ``n_kept``, ``n_kept_samples``, ``n_kept_refinements``; with ``critique`` also
    ``n_refined`` and ``refine_success`` (verified / refined; NaN when none was refined).
    """
    arrays = [np.asarray(a, bool) for a in (correct, refined, refine_correct, keep_sample, keep_refine)]
    correct, refined, refine_correct, keep_sample, keep_refine = arrays
    if any(a.shape != correct.shape for a in arrays) or correct.shape[:1] != (len(problems),):
        raise ValueError(f"pool_metrics: shapes {[a.shape for a in arrays]}; expected all [P={len(problems)}, K]")
    levels = np.asarray([p.difficulty for p in problems])
    kept = (keep_sample | keep_refine).sum(1)
    counts = {"solved": correct.sum(1), "contributed": kept,
              "rescued": np.where(correct.any(1), 0, keep_refine.sum(1))}
    out: dict[str, float] = {"self_train/pool/accuracy": float(correct.mean())}
    for name, c in counts.items():
        out[f"self_train/pool/{name}"] = float(np.mean(c > 0))
        for d, share in solved_share_by_difficulty(problems, c).items():
            out[f"self_train/pool/{name}/{level_key(d)}"] = share
    total = int(kept.sum())
    for d in sorted(set(levels.tolist())):
        at = levels == d
        out[f"self_train/pool/accuracy/{level_key(d)}"] = float(correct[at].mean())
        out[f"self_train/pool/data_share/{level_key(d)}"] = float(kept[at].sum() / total) if total else float("nan")
    out |= {"self_train/pool/n_kept": float(total), "self_train/pool/n_kept_samples": float(keep_sample.sum()),
            "self_train/pool/n_kept_refinements": float(keep_refine.sum())}
    if critique:
        n_refined = int(refined.sum())
        out["self_train/pool/n_refined"] = float(n_refined)
        out["self_train/pool/refine_success"] = float(refine_correct.sum() / n_refined) if n_refined else float("nan")
    return out


def pass_ks(n: int) -> list[int]:
    """The k of the pass@k curve for n samples: 1, 2, 4, ... up to n, and n."""
    ks = [k for k in (2 ** i for i in range(max(n, 1).bit_length())) if k <= n]
    return ks + ([n] if ks[-1] != n else [])


def eval_metrics(problems: Sequence[Problem], correct_counts: np.ndarray, distinct_counts: np.ndarray,
                 n_samples: int) -> dict[str, float]:
    """``self_train/eval/...`` from ``n_samples`` samples per test problem.

    correct_counts / distinct_counts [P]: correct and distinct correct samples per problem.
    Per level (``/level_<d>``) and over all problems: ``solved`` (share with >= 1 correct),
    ``pass@k/<k>`` for k in :func:`pass_ks` (unbiased estimator) and ``distinct_correct``
    (mean distinct correct solutions per solved problem, NaN when none is solved).
    """
    counts, distinct = np.asarray(correct_counts), np.asarray(distinct_counts, np.float64)
    if counts.shape != (len(problems),) or distinct.shape != counts.shape:
        raise ValueError(f"eval_metrics: correct_counts {counts.shape} and distinct_counts {distinct.shape}; "
                         f"expected ({len(problems)},)")
    levels = np.asarray([p.difficulty for p in problems])
    groups = [("", np.ones(len(problems), bool))] + [(f"/{level_key(d)}", levels == d)
                                                      for d in sorted(set(levels.tolist()))]
    out: dict[str, float] = {}
    for suffix, at in groups:
        out[f"self_train/eval/solved{suffix}"] = float(np.mean(counts[at] > 0))
        out[f"self_train/eval/distinct_correct{suffix}"] = distinct_per_solved(counts[at], distinct[at])
        for k, v in pass_at_k_curve(n_samples, counts[at], pass_ks(n_samples)).items():
            out[f"self_train/eval/pass@k/{k}{suffix}"] = v
    return out


def sft_batches(n: int, batch_size: int, steps: int, seed: int) -> np.ndarray:
    """Example indices [steps, batch_size] for ``n`` examples: consecutive random permutations
    of ``0..n-1`` (epochs), so every example is seen equally often (to within one)."""
    if n < 1:
        raise ValueError(f"sft_batches: no examples (n={n})")
    rng = np.random.default_rng(seed)
    need = steps * batch_size
    order = np.concatenate([rng.permutation(n) for _ in range(-(-need // n))])
    return order[:need].reshape(steps, batch_size)


def fits(tok: Tokenizer, texts: Sequence[str], limit: int, eos: bool = False) -> np.ndarray:
    """[N] bool: the text encodes to at most ``limit`` tokens: as a target with the end token if
    ``eos``, else as a prompt (``encode_prompt``: with bos where the model expects one)."""
    encode = (lambda t: tok.encode(t, eos=True)) if eos else tok.encode_prompt
    return np.asarray([len(encode(t)) <= limit for t in texts], bool)


def stream_seed(*parts: int) -> int:
    """A non-negative int32 sampling seed from integer parts (a stream per purpose and iteration)."""
    return int(np.random.SeedSequence([int(x) for x in parts]).generate_state(1)[0] >> 1)


@dataclasses.dataclass(frozen=True)
class PoolRound:
    """One iteration's samples of the pool (host); P problems x K samples, problem-major.

    texts / critiques / refinements: [P·K] ("" where a sample was not refined); correct,
    usable, refined, refine_correct, refine_usable: [P, K] bool — usable = verified, ended
    with the end token and fits ``sampling.max_new_tokens``; entropy: the samples' mean token
    entropy; n_too_long: wrong samples left unrefined because a critique or refinement prompt
    exceeded the largest bucket.
    """

    texts: list[str]
    correct: np.ndarray
    usable: np.ndarray
    critiques: list[str]
    refinements: list[str]
    refined: np.ndarray
    refine_correct: np.ndarray
    refine_usable: np.ndarray
    entropy: float
    n_too_long: int


def logged_samples(problems: Sequence[Problem], r: PoolRound, keep_sample: np.ndarray, keep_refine: np.ndarray,
                    n: int) -> list[dict]:
    """Up to ``n`` refined samples (with critique and refinement), else the first samples."""
    k = r.correct.shape[1]
    rows = np.flatnonzero(r.refined.reshape(-1)) if r.refined.any() else np.arange(r.correct.size)
    out = []
    for i in rows[:n]:
        p = problems[i // k]
        s = dict(uid=p.uid, difficulty=p.difficulty, question=p.question, sample=r.texts[i],
                 correct=bool(r.correct.flat[i]), kept=bool(keep_sample.flat[i]))
        if r.refined.flat[i]:
            s |= dict(critique=r.critiques[i], refinement=r.refinements[i],
                      refinement_correct=bool(r.refine_correct.flat[i]), refinement_kept=bool(keep_refine.flat[i]))
        out.append(s)
    return out
