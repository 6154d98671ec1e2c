"""Config validation: one entry point per program (:func:`validate`), every number's sign and
range (:func:`check_numbers`), and the combinations of fields; every error names the key(s)
and the value expected, before anything compiles.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Iterator

import jax
import ml_collections

from critique_jax.config import loss_config
from critique_jax.critique import sources
from critique_jax.critique.critic import validate_critic
from critique_jax.critique.loop import SCOPES
from critique_jax.critique.pool import validate_self_train
from critique_jax.models import FAMILIES, SIZES
from critique_jax.models.config import ATTENTION_IMPLS, REMAT_POLICIES
from critique_jax.parallel.sharding import LAYOUTS
from critique_jax.rl import policy_init
from critique_jax.rl.advantages import ESTIMATORS
from critique_jax.rl.confidence import span_kind
from critique_jax.rl.losses import token_separable
from critique_jax.rl.rewards import parse_rewards, uses_confidence
from critique_jax.rl.train_step import SCHEDULES
from critique_jax.tasks import files, get_task, task_names
from critique_jax.text.prompt_format import PROMPT_FORMATS
from critique_jax.wandb_log import check_wandb

log = logging.getLogger("critique_jax")

#: Numbers every field obeys unless listed here: finite, and >= 0 outside ``rl.loss`` (whose
#: dataclasses check their own ranges). Keys whose -1 means "the rest" or "from the environment":
_MINUS_ONE_ALLOWED = ("mesh.data", "mesh.fsdp", "mesh.tensor", "distributed.process_id")
#: Integer fields (or tuples of them) that must be >= 1.
_AT_LEAST_ONE = ("task.n_train", "task.n_test", "task.n_solutions", "task.difficulties", "tokenizer.vocab_size",
                 "sampling.max_new_tokens", "sampling.prompt_buckets", "critique.prompt_buckets",
                 "critique.refine_buckets", "eval.n_problems", "sft.log_every", "sft.max_bad_steps",
                 "rl.max_bad_steps", "critic.max_bad_steps", "checkpoint.keep_last")
#: Float fields with a narrower range: (low, high, low excluded).
_RANGES = {**{f"{phase}.lr": (0.0, 1.0, True) for phase in ("sft", "rl", "critic", "self_train")},
           "rl.grad_clip": (0.0, math.inf, True)}


def _leaves(d: ml_collections.ConfigDict, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for k, v in d.items():
        if isinstance(v, ml_collections.ConfigDict):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def check_numbers(c: ml_collections.ConfigDict) -> None:
    """Sign, finiteness and range of every numeric field (module constants); errors name the key."""
    for key, value in _leaves(c):
        values = value if isinstance(value, (tuple, list)) else (value,)
        numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if not numbers:
            continue
        if not all(math.isfinite(v) for v in numbers):
            raise ValueError(f"config {key}={value!r}: expected a finite number")
        if key in _RANGES:
            lo, hi, lo_open = _RANGES[key]
            if not (lo < value if lo_open else lo <= value) or value > hi:
                raise ValueError(f"config {key}={value!r}: expected a number in {'(' if lo_open else '['}{lo:g}, "
                                 f"{hi:g}]")
            continue
        low = 1 if key in _AT_LEAST_ONE else -1 if key in _MINUS_ONE_ALLOWED else 0
        if not key.startswith("rl.loss.") and min(numbers) < low:
            raise ValueError(f"config {key}={value!r}: expected {'numbers' if len(values) > 1 else 'a number'} "
                             f">= {low}")


def warn_sequence_length(c: ml_collections.ConfigDict, longest: int) -> None:
    """Logs when prompts + responses (``longest`` tokens) exceed the preset's ``max_seq_len``,
    which the run then raises to ``longest`` (positions beyond the preset's are untested)."""
    preset = SIZES[c.model.preset]["max_seq_len"]
    if longest > preset:
        log.warning("config sampling.max_new_tokens=%d with prompt buckets up to %d tokens needs %d positions: more "
                    "than model.preset=%r's max_seq_len=%d, which is raised to %d", c.sampling.max_new_tokens,
                    longest - c.sampling.max_new_tokens, longest, c.model.preset, preset, longest)


def check_task_files(c: ml_collections.ConfigDict) -> None:
    """File-backed tasks have existing JSONL/Parquet ``task.train_files`` and ``task.test_files``,
    generated tasks none (errors name the key and the path)."""
    task = get_task(c.task.name)
    for key in ("train_files", "test_files"):
        paths = c.task[key]
        if isinstance(paths, str):
            raise ValueError(f"config task.{key}={paths!r}: expected a tuple of paths")
        if task.generative and paths:
            raise ValueError(f"config task.{key}={tuple(paths)}: task.name={c.task.name!r} generates its problems; "
                             "files are for the file-backed tasks (gsm8k, math)")
        if not task.generative and not paths:
            raise ValueError(f"config task.{key} is empty: task.name={c.task.name!r} reads its problems from JSONL or "
                             "Parquet files (README: Train on GSM8K / MATH)")
        for path in paths:
            try:
                files.check_exists(path)
            except (FileNotFoundError, ValueError) as e:
                raise ValueError(f"config task.{key}: {e}") from None


#: The programs, each with its own validation (:func:`validate`).
PROGRAMS = ("train", "critic", "self_train", "evaluate")


def validate(c: ml_collections.ConfigDict, n_devices: int, program: str = "train") -> None:
    """The validation of ``program`` (:data:`PROGRAMS`): every number (:func:`check_numbers`),
    the settings every run uses (model, mesh, sampling, evaluation batches, critique type, policy
    source), then the program's own section: ``train`` the SFT and RL settings and the loss,
    ``critic`` the ``critic`` section, ``self_train`` the ``self_train`` section (``evaluate``:
    nothing more). Each error names the key(s) and the expected value."""
    if program not in PROGRAMS:
        raise ValueError(f"validate: program={program!r}; expected one of {PROGRAMS}")
    check_numbers(c)

    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ValueError(f"config {msg}")

    check_wandb(c)
    need(c.task.name in task_names(), f"task.name={c.task.name!r}: expected one of {task_names()}")
    need(c.model.preset in SIZES, f"model.preset={c.model.preset!r}: expected one of {sorted(SIZES)}")
    need(c.model.family in FAMILIES, f"model.family={c.model.family!r}: expected one of {sorted(FAMILIES)}")
    need(c.model.remat in REMAT_POLICIES, f"model.remat={c.model.remat!r}: expected one of {list(REMAT_POLICIES)}")
    need(c.model.attention in ATTENTION_IMPLS,
         f"model.attention={c.model.attention!r}: expected one of {list(ATTENTION_IMPLS)}")
    need(c.model.attention != "cudnn" or jax.default_backend() == "gpu",
         f"model.attention='cudnn' needs a GPU (backend here: {jax.default_backend()}); use 'xla'")
    for phase in ("sft", "rl"):
        need(c[phase].adam_mu_dtype in ("", "float32", "bfloat16"),
             f"{phase}.adam_mu_dtype={c[phase].adam_mu_dtype!r}: expected '' (the parameters' dtype), "
             "'float32' or 'bfloat16'")

    for role in ("reference", "critic"):
        need(c.mesh[role] in LAYOUTS, f"mesh.{role}={c.mesh[role]!r}: expected one of {list(LAYOUTS)}")
    need(not c.mesh.cpu_devices or jax.default_backend() == "cpu",
         f"mesh.cpu_devices={c.mesh.cpu_devices}: splits the CPU into devices, but this run computes on "
         f"{jax.default_backend()} (JAX_PLATFORMS); use 0")
    sizes = [c.mesh.data, c.mesh.fsdp, c.mesh.tensor]
    need(sum(s == -1 for s in sizes) <= 1, f"mesh.data/fsdp/tensor={sizes}: at most one may be -1")
    known = 1
    for s in sizes:
        need(s == -1 or s >= 1, f"mesh sizes {sizes}: expected positive integers or -1")
        known *= s if s != -1 else 1
    need(n_devices % known == 0, f"mesh {sizes}: {n_devices} devices are not divisible by {known}")
    data = c.mesh.data if c.mesh.data != -1 else n_devices // known
    fsdp = c.mesh.fsdp if c.mesh.fsdp != -1 else n_devices // known
    shards = data * fsdp
    need(c.eval.batch_prompts >= 1 and c.eval.batch_prompts % shards == 0,
         f"eval.batch_prompts={c.eval.batch_prompts}: must be a positive multiple of the {shards} batch shards "
         "(mesh data x fsdp)")
    need(c.eval.group_size >= 1, f"eval.group_size={c.eval.group_size}: expected >= 1")
    need(c.sampling.temperature > 0, f"sampling.temperature={c.sampling.temperature}: RL sampling needs > 0")
    need(0 < c.sampling.top_p <= 1, f"sampling.top_p={c.sampling.top_p}: expected a value in (0, 1]")
    need(c.sampling.top_k >= 0, f"sampling.top_k={c.sampling.top_k}: expected >= 0 (0 = off)")
    need(len(c.sampling.prompt_buckets) > 0, "sampling.prompt_buckets is empty")
    need(c.sampling.decode_phases <= c.sampling.max_new_tokens,
         f"sampling.decode_phases={c.sampling.decode_phases}: expected 0 (automatic) or at most "
         f"sampling.max_new_tokens={c.sampling.max_new_tokens}")
    need(c.prompt.format in PROMPT_FORMATS,
         f"prompt.format={c.prompt.format!r}: expected one of {list(PROMPT_FORMATS)}")
    for problem in sources.check_config(c):  # the critique type's own checks
        need(False, problem)
    policy_init.check_config(c)
    if program == "critic":
        validate_critic(c, shards)
    elif program == "self_train":
        validate_self_train(c, shards, c.task.n_train)
    elif program == "train":
        _validate_train(c, shards, need)
    check_task_files(c)  # last: the combinations above are errors whatever the files


def _validate_train(c: ml_collections.ConfigDict, shards: int, need: Callable[[bool, str], None]) -> None:
    """The train program's SFT, RL, loss and Critique-GRPO settings (``shards``: data x fsdp)."""
    need(c.rl.advantage in ESTIMATORS, f"rl.advantage={c.rl.advantage!r}: expected one of {sorted(ESTIMATORS)}")
    need(c.rl.group_size >= 2 or c.rl.advantage not in ("grpo", "drgrpo", "rloo"),
         f"rl.group_size={c.rl.group_size}: group-relative advantages ({c.rl.advantage}) need a group of >= 2")
    for key, n in (("rl.prompts_per_step", c.rl.prompts_per_step), ("sft.batch_size", c.sft.batch_size)):
        need(n >= 1 and n % shards == 0,
             f"{key}={n}: must be a positive multiple of the {shards} batch shards (mesh data x fsdp)")
    n_samples = c.rl.prompts_per_step * c.rl.group_size
    need(c.rl.minibatches >= 1 and n_samples % (c.rl.minibatches * shards) == 0,
         f"rl.minibatches={c.rl.minibatches}: rl.prompts_per_step x rl.group_size = {n_samples} samples must "
         f"split into minibatches that are multiples of the {shards} batch shards")
    mb = n_samples // max(c.rl.minibatches, 1)
    need(c.rl.micro_batches >= 1 and mb % (c.rl.micro_batches * shards) == 0,
         f"rl.micro_batches={c.rl.micro_batches}: a minibatch of {mb} samples must split into micro-batches that "
         f"are multiples of the {shards} batch shards")
    need(c.rl.epochs >= 1, f"rl.epochs={c.rl.epochs}: expected >= 1")
    need(c.sft.steps >= 0 and c.rl.steps >= 0, f"sft.steps={c.sft.steps}, rl.steps={c.rl.steps}: expected >= 0")
    for phase in ("sft", "rl"):
        p = c[phase]
        need(p.steps == 0 or 0 <= p.warmup_steps <= p.steps,  # no steps: no schedule, any warm-up
             f"{phase}.warmup_steps={p.warmup_steps}: expected between 0 and {phase}.steps={p.steps}")
    need(c.rl.pool_size == 0 or c.rl.prompts_per_step <= c.rl.pool_size <= c.task.n_train,
         f"rl.pool_size={c.rl.pool_size}: expected 0 (all) or rl.prompts_per_step={c.rl.prompts_per_step} to "
         f"task.n_train={c.task.n_train}")
    need(c.rl.lr_schedule in SCHEDULES, f"rl.lr_schedule={c.rl.lr_schedule!r}: expected one of {list(SCHEDULES)}")
    need(0 <= c.rl.end_lr_ratio <= 1, f"rl.end_lr_ratio={c.rl.end_lr_ratio}: expected a value in [0, 1]")
    need(c.checkpoint.every >= 1 and c.eval.every >= 1, "checkpoint.every and eval.every must be >= 1")
    if c.critique.type != "none":
        need(1 <= c.critique.n_refine < c.rl.group_size,
             f"critique.n_refine={c.critique.n_refine}: expected 1 <= n_refine < rl.group_size={c.rl.group_size}")
        need(c.rl.loss.name == "critique_grpo" or c.critique.type == "resample",
             f"critique.type={c.critique.type!r} needs rl.loss.name='critique_grpo' (got {c.rl.loss.name!r})")
        need(c.critique.scope in SCOPES, f"critique.scope={c.critique.scope!r}: expected one of {list(SCOPES)}")
        need(c.rl.recompute_old_logp, "critique runs need rl.recompute_old_logp=True: refinements were sampled "
             "with the critique in context, their old log-probs are recomputed under the solve prompt")
    rewards = parse_rewards(c.rl.rewards)  # imports user reward modules: a spec that does not import fails here
    need(c.critique.type == "none" or c.rl.rewards.replace(" ", "") == "correct",
         f"rl.rewards={c.rl.rewards!r} with critique.type={c.critique.type!r}: Critique-GRPO scores initial "
         "responses and refinements by the verifier alone; user rewards apply to runs without critique")
    need(c.rl.loss.name != "critique_grpo" or c.critique.type not in ("none", "resample"),
         f"rl.loss.name='critique_grpo' needs refinements: set critique.type (e.g. 'rule_step'), not "
         f"{c.critique.type!r}")
    need(not c.sft.skip_rl_pool or c.rl.pool_size > 0,
         "sft.skip_rl_pool=True leaves the RL pool out of SFT: set rl.pool_size (the pool's size) too")
    need(c.critique.sft_refine_every >= 0, f"critique.sft_refine_every={c.critique.sft_refine_every}: expected >= 0")
    need(c.critique.sft_refine_target in ("any", "source"),
         f"critique.sft_refine_target={c.critique.sft_refine_target!r}: expected 'any' or 'source'")
    loss = loss_config(c)
    need(c.rl.micro_batches == 1 or token_separable(loss),
         f"rl.micro_batches={c.rl.micro_batches} with rl.loss.name={loss.name!r}"
         f"{' and a forking mask' if loss.forking_rho is not None else ''}: its statistics span the minibatch, "
         "so its gradient is not a sum over micro-batches; set rl.micro_batches=1")
    no_reference = c.sft.steps == 0 and not c.init_from and not c.model.hf_dir
    need(not (loss.ref_kl_coef > 0 and no_reference),
         "rl.loss.ref_kl_coef > 0 needs a reference policy: set sft.steps > 0, init_from or model.hf_dir")
    if uses_confidence(rewards):
        span_kind(get_task(c.task.name), c.rl.confidence_span)  # a one-line ValueError: an unknown span, or a derivation without one
    need(not (uses_confidence(rewards) and no_reference),
         f"rl.rewards={c.rl.rewards!r}: the confidence reward needs a reference policy: set sft.steps > 0, "
         "init_from or model.hf_dir")
