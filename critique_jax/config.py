"""The experiment configuration: defaults, validation, and the typed objects built from it.

Config files under ``configs/`` start from :func:`default_config` and change fields; every
field can be overridden on the command line (``--config.rl.loss.name=kl_cov``). The config is
locked, so an unknown key fails with the key's name; :func:`validate` checks the
combinations before anything compiles and names the offending key.

Loss options have one source of truth, the loss dataclasses in ``critique_jax.rl.config``:
``rl.loss`` holds the shared terms, and one sub-dict per registered loss with that loss's own
fields and defaults (``rl.loss.clip_cov.ratio``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Iterator

import jax
import ml_collections

from critique_jax.rl.config import LossConfig
from critique_jax.rl.losses import get_loss, make_loss_config, registered_losses
from critique_jax.critique import sources
from critique_jax.rl.advantages import ESTIMATORS
from critique_jax.rl.train_step import SCHEDULES
from critique_jax.models import FAMILIES, SIZES
from critique_jax.models.config import ATTENTION_IMPLS, OVERRIDABLE, REMAT_POLICIES
from critique_jax.rl import policy_init

log = logging.getLogger("critique_jax")

_SHARED_LOSS_FIELDS = tuple(f.name for f in dataclasses.fields(LossConfig))


def _loss_defaults() -> ml_collections.ConfigDict:
    loss = ml_collections.ConfigDict()
    loss.name = "ppo"
    base = LossConfig()
    for f in _SHARED_LOSS_FIELDS:
        loss[f] = _field(getattr(base, f))
    for name in registered_losses():
        cls = get_loss(name).config_cls
        defaults = cls()
        sub = ml_collections.ConfigDict()
        for f in dataclasses.fields(cls):
            if f.name not in _SHARED_LOSS_FIELDS:
                value = getattr(defaults, f.name)
                # A loss wrapping another (critique_grpo's ``base``) names it; its options are
                # that loss's own section (``rl.loss.clip_cov.ratio``).
                sub[f.name] = _field(value.name if isinstance(value, LossConfig) else value)
        loss[name] = sub
    return loss


def _field(value, field_type: type = float) -> ml_collections.FieldReference:
    """A typed config field; a None default is an optional ``field_type`` (e.g. ``forking_rho``)."""
    return ml_collections.FieldReference(value, field_type=field_type if value is None else type(value))


def default_config() -> ml_collections.ConfigDict:
    """Every field of an experiment, with the defaults used by ``configs/*.py``."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.task = dict(name="countdown", difficulties=(1,), data_seed=0, n_train=4000, n_test=256, n_solutions=4)
    c.data_dir = ""  # "" = <cache>/data (CRITIQUE_JAX_CACHE or ~/.cache/critique_jax)
    c.tokenizer = dict(vocab_size=512, seed=0)
    # The policy: a size preset x a family, with any ModelConfig field of models.config.OVERRIDABLE
    # changed by model.overrides (None = the preset's; --config.model.overrides.d_model=512), or,
    # with hf_dir, a Hugging Face checkpoint directory whose config.json, tokenizer and weights
    # are the initial policy (preset, family and the tokenizer section are then unused; see
    # critique_jax.rl.policy_init). Computation (README "Precision and memory"): dtype (activations),
    # param_dtype (parameters, the optimiser's master weights), remat (REMAT_POLICIES), attention
    # (ATTENTION_IMPLS).
    c.model = dict(preset="small", family="qwen2", dtype="float32", param_dtype="float32", hf_dir="",
                   remat="none", attention="reference")
    c.model.overrides = {name: _field(None, t) for name, t in OVERRIDABLE.items()}
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    c.distributed = dict(coordinator_address="", num_processes=0, process_id=-1)
    c.sampling = dict(prompt_buckets=(24,), max_new_tokens=48, temperature=1.0, top_p=1.0, top_k=0)
    # adam_mu_dtype (sft, rl): the dtype of Adam's first moment ("" = the parameters' dtype).
    c.sft = dict(steps=400, batch_size=64, lr=2e-3, warmup_steps=20, weight_decay=0.0, log_every=20,
                 max_bad_steps=3, adam_mu_dtype="")
    # RL: lr_schedule "constant" (the papers') or "cosine" (decays to lr x end_lr_ratio at the last
    # step); warmup_steps counts RL steps; the schedule advances once per optimiser update
    # (epochs x minibatches per step). entropy_change: re-measure the batch's initial-response
    # entropy after each update (one more forward pass) and log train/entropy_change.
    c.rl = dict(steps=100, prompts_per_step=16, group_size=8, epochs=1, minibatches=2, lr=1e-4,
                lr_schedule="constant", end_lr_ratio=0.1,
                warmup_steps=0, weight_decay=0.0, grad_clip=1.0, advantage="grpo",
                recompute_old_logp=True, max_bad_steps=3, entropy_change=True,
                adam_mu_dtype="", pool_size=0)  # RL prompts from the first pool_size train problems only; 0 = all
    c.rl.loss = _loss_defaults()
    # Critique in the loop (Critique-GRPO): critique type, refinements kept per group, where a
    # trained critique model lives (a train_critic run directory), and the prompt buckets of
    # critique and refinement prompts. sft_refine_every > 0 adds a refinement-format SFT batch
    # (problem, planted wrong solution, rule critique -> correct solution) every that many steps.
    # sft_refine_target: the target of those batches, "any" reference solution of the problem or
    # the "source" one the error was planted in. format: what the policy reads of a step critique
    # ("plain": the decisions; "explained": the decisions, with the worked note on the first wrong
    # step, which needs longer refine_buckets).
    c.critique = dict(type="none", n_refine=1, critic_from="", prompt_buckets=(64,), refine_buckets=(112,),
                      sft_refine_every=0, sft_refine_target="any", format="plain")
    # The critique model (python -m critique_jax.train_critic): size, supervised training on
    # step-level critiques of reference and planted-wrong solutions, held-out evaluation.
    c.critic = dict(preset="mini", family="qwen2", steps=3000, batch_size=32, lr=2e-3, warmup_steps=20,
                    weight_decay=0.0,
                    wrong_fraction=0.5,          # share of wrong solutions in the training set
                    wrong_per_solution=1,        # planted errors per reference solution
                    target_format="worked",      # "worked": step notes before each decision; "plain"
                    prompt_width=0, max_new_tokens=0,  # 0 = the longest prompt / target in the data
                    log_every=20, eval_every=0,  # eval_every 0 = evaluate after the last step only
                    checkpoint_every=100, eval_n_problems=128, eval_batch=32, n_logged_samples=8,
                    init_from="",                # a {"params"} checkpoint dir (e.g. a policy's sft_policy/)
                    policy_from="",              # a train run whose SFT policy's samples join the data
                    policy_samples=0,            # its samples per train problem (held out: 1 per problem)
                    max_bad_steps=3)             # consecutive non-finite steps that stop the run
    # Critique-in-the-loop self-training (python -m critique_jax.self_train).
    c.self_train = dict(iterations=4,
                        pool_size=0,             # the first pool_size train problems (cycling levels); 0 = all
                        samples_per_problem=8,   # K samples per pool problem per iteration
                        batch_prompts=32,        # problems per sampling call (fixed shape)
                        max_per_problem=0,       # cap on training examples per problem (ReST-EM style); 0 = none
                        dedupe=False,            # drop exact duplicate texts of the same problem
                        sft_steps=100, sft_batch_size=32, lr=1e-3, warmup_steps=10, weight_decay=0.0)
    c.eval = dict(every=20, n_problems=128, group_size=8, batch_prompts=32, n_logged_samples=4)
    c.checkpoint = dict(every=20, keep_last=2, keep_best=1, best_metric="eval/pass@1", async_save=True)
    c.init_from = ""  # a run directory whose final SFT checkpoint initialises the policy (skips SFT)
    c.log = dict(tensorboard=True, progress=True)
    c.lock()
    return c


def loss_config(c: ml_collections.ConfigDict) -> LossConfig:
    """The validated loss dataclass of ``c.rl.loss`` (errors name the config key)."""
    name = c.rl.loss.name
    if name not in registered_losses():
        raise ValueError(f"config rl.loss.name={name!r}: unknown loss; registered: {list(registered_losses())}")
    opts = {f: c.rl.loss[f] for f in _SHARED_LOSS_FIELDS}
    opts |= dict(c.rl.loss[name])
    for f in dataclasses.fields(get_loss(name).config_cls):
        if f.name not in _SHARED_LOSS_FIELDS and isinstance(f.default, LossConfig):
            inner = opts[f.name]
            if inner not in registered_losses() or inner == name:
                raise ValueError(f"config rl.loss.{name}.{f.name}={inner!r}: expected another registered loss, "
                                 f"one of {[n for n in registered_losses() if n != name]}")
            try:
                opts[f.name] = make_loss_config(inner, **c.rl.loss[inner])
            except ValueError as e:
                raise ValueError(f"config rl.loss.{inner} (the {f.name} of {name}): {e}") from None
    try:
        return make_loss_config(name, **opts)
    except ValueError as e:
        raise ValueError(f"config rl.loss ({name}): {e}") from None


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


def validate(c: ml_collections.ConfigDict, n_devices: int) -> None:
    """Checks every number (:func:`check_numbers`) and the combinations of fields; each error
    names the key(s) and the expected value."""
    check_numbers(c)

    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ValueError(f"config {msg}")

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
    need(c.rl.advantage in ESTIMATORS, f"rl.advantage={c.rl.advantage!r}: expected one of {sorted(ESTIMATORS)}")
    need(c.rl.group_size >= 2 or c.rl.advantage not in ("grpo", "drgrpo", "rloo"),
         f"rl.group_size={c.rl.group_size}: group-relative advantages ({c.rl.advantage}) need a group of >= 2")
    for key, n in (("rl.prompts_per_step", c.rl.prompts_per_step), ("sft.batch_size", c.sft.batch_size),
                   ("eval.batch_prompts", c.eval.batch_prompts)):
        need(n >= 1 and n % shards == 0,
             f"{key}={n}: must be a positive multiple of the {shards} batch shards (mesh data x fsdp)")
    n_samples = c.rl.prompts_per_step * c.rl.group_size
    need(c.rl.minibatches >= 1 and n_samples % (c.rl.minibatches * shards) == 0,
         f"rl.minibatches={c.rl.minibatches}: rl.prompts_per_step x rl.group_size = {n_samples} samples must "
         f"split into minibatches that are multiples of the {shards} batch shards")
    need(c.eval.group_size >= 1, f"eval.group_size={c.eval.group_size}: expected >= 1")
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
    need(c.sampling.temperature > 0, f"sampling.temperature={c.sampling.temperature}: RL sampling needs > 0")
    need(0 < c.sampling.top_p <= 1, f"sampling.top_p={c.sampling.top_p}: expected a value in (0, 1]")
    need(c.sampling.top_k >= 0, f"sampling.top_k={c.sampling.top_k}: expected >= 0 (0 = off)")
    need(len(c.sampling.prompt_buckets) > 0, "sampling.prompt_buckets is empty")
    need(c.checkpoint.every >= 1 and c.eval.every >= 1, "checkpoint.every and eval.every must be >= 1")
    for problem in sources.check_config(c):  # the critique type's own checks
        need(False, problem)
    if c.critique.type != "none":
        need(1 <= c.critique.n_refine < c.rl.group_size,
             f"critique.n_refine={c.critique.n_refine}: expected 1 <= n_refine < rl.group_size={c.rl.group_size}")
        need(c.rl.loss.name == "critique_grpo",
             f"critique.type={c.critique.type!r} needs rl.loss.name='critique_grpo' (got {c.rl.loss.name!r})")
        need(c.rl.recompute_old_logp, "critique runs need rl.recompute_old_logp=True: refinements were sampled "
             "with the critique in context, their old log-probs are recomputed under the solve prompt")
    need(c.rl.loss.name != "critique_grpo" or c.critique.type != "none",
         "rl.loss.name='critique_grpo' needs refinements: set critique.type (e.g. 'rule_step')")
    need(c.critique.sft_refine_every >= 0, f"critique.sft_refine_every={c.critique.sft_refine_every}: expected >= 0")
    need(c.critique.sft_refine_target in ("any", "source"),
         f"critique.sft_refine_target={c.critique.sft_refine_target!r}: expected 'any' or 'source'")
    loss = loss_config(c)
    need(not (loss.ref_kl_coef > 0 and c.sft.steps == 0 and not c.init_from and not c.model.hf_dir),
         "rl.loss.ref_kl_coef > 0 needs a reference policy: set sft.steps > 0, init_from or model.hf_dir")
    policy_init.check_config(c)
