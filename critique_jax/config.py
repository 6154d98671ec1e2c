"""The experiment configuration: defaults and the typed loss config built from it (validation:
:mod:`critique_jax.validation`).

Config files under ``configs/`` start from :func:`default_config` and change fields; every
field can be overridden on the command line (``--config.rl.loss.name=kl_cov``). The config is
locked, so an unknown key fails with the key's name; :func:`critique_jax.validation.validate`
checks the combinations before anything compiles and names the offending key.

Loss options have one source of truth, the loss dataclasses in ``critique_jax.rl.config``:
``rl.loss`` holds the shared terms, and one sub-dict per registered loss with that loss's own
fields and defaults (``rl.loss.clip_cov.ratio``).
"""

from __future__ import annotations

import dataclasses

import ml_collections

from critique_jax.rl.config import LossConfig
from critique_jax.rl.losses import get_loss, make_loss_config, registered_losses
from critique_jax.models.config import OVERRIDABLE


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
    # File-backed tasks (gsm8k, math) read JSONL/Parquet files, train_files/test_files (tuples of paths;
    # n_train/n_test then cap the problems read, difficulties filter them); generated tasks take none.
    c.task = dict(name="countdown", difficulties=(1,), data_seed=0, n_train=4000, n_test=256, n_solutions=4,
                  train_files=(), test_files=())
    c.data_dir = ""  # "" = <cache>/data (CRITIQUE_JAX_CACHE or ~/.cache/critique_jax)
    # The persistent XLA compilation cache of the command-line programs (a run's second start, a sweep's
    # later runs and the quickstart's second RL run load compiled programs instead of compiling them):
    # "" = <cache>/xla, "off" = none, else a directory; JAX_COMPILATION_CACHE_DIR, when set, wins.
    c.compile_cache = ""
    c.tokenizer = dict(vocab_size=512, seed=0)
    # The policy: a size preset x a family, with any ModelConfig field of models.config.OVERRIDABLE
    # changed by model.overrides (None = the preset's; --config.model.overrides.d_model=512), or,
    # with hf_dir, a Hugging Face checkpoint directory whose config.json, tokenizer and weights
    # are the initial policy (preset, family and the tokenizer section are then unused; see
    # critique_jax.rl.policy_init). Computation (README "Precision and memory"): dtype (activations),
    # param_dtype (parameters, the optimiser's master weights), remat (REMAT_POLICIES), attention
    # (ATTENTION_IMPLS), scan_layers (the blocks' parameters stacked per kind and the training forward's
    # blocks as one lax.scan: the update's compile time flat in depth; the checkpoints take that layout,
    # so a resumed run keeps it).
    c.model = dict(preset="small", family="qwen2", dtype="float32", param_dtype="float32", hf_dir="",
                   remat="none", attention="reference", scan_layers=False)
    c.model.overrides = {name: _field(None, t) for name, t in OVERRIDABLE.items()}
    # cpu_devices: on the CPU, the host split into this many JAX devices (one per core: the mesh then
    # shards the batch over the cores, each a thread of its own; README "Benchmarks"); 0 = JAX's
    # default (one device, or XLA_FLAGS' --xla_force_host_platform_device_count). Set at start-up.
    c.mesh = dict(data=-1, fsdp=1, tensor=1, reference="train", critic="train", cpu_devices=0)
    c.distributed = dict(coordinator_address="", num_processes=0, process_id=-1)
    c.sampling = dict(prompt_buckets=(24,), max_new_tokens=48, temperature=1.0, top_p=1.0, top_k=0,
                      decode_phases=0)  # the policy sampler's decode phases (0: one per 16 tokens, <= 4)
    # How prompts are written (critique_jax.text.prompt_format): auto = marker tokens with the
    # project tokenizer, the chat template of a Hugging Face tokenizer that has one, else plain
    # text; instruction "" = the task's answer-format instruction; system "" = no system prompt.
    c.prompt = dict(format="auto", instruction="", system="")
    # adam_mu_dtype (sft, rl): the dtype of Adam's first moment ("" = the parameters' dtype).
    # skip_rl_pool: SFT leaves out every train record whose question is one of the RL pool's (the first
    # rl.pool_size train problems; a generated split repeats questions), so the RL pool is unseen.
    c.sft = dict(steps=400, batch_size=64, lr=2e-3, warmup_steps=20, weight_decay=0.0, log_every=20,
                 max_bad_steps=3, adam_mu_dtype="", skip_rl_pool=False)
    # RL: lr_schedule "constant" (the papers') or "cosine" (decays to lr x end_lr_ratio at the last
    # step); warmup_steps counts RL steps; the schedule advances once per optimiser update
    # (epochs x minibatches per step). entropy_change: re-measure the batch's initial-response
    # entropy after each update (one more forward pass) and log train/entropy_change. micro_batches:
    # each minibatch's gradient summed over this many row blocks (gradient accumulation: the same
    # update, one block's activations at a time; token-separable losses only, not Clip-Cov, KL-Cov
    # or forking masks, whose statistics span the minibatch).
    c.rl = dict(steps=100, prompts_per_step=16, group_size=8, epochs=1, minibatches=2, micro_batches=1, lr=1e-4,
                lr_schedule="constant", end_lr_ratio=0.1,
                warmup_steps=0, weight_decay=0.0, grad_clip=1.0, advantage="grpo",
                recompute_old_logp=True, max_bad_steps=3, entropy_change=True,
                adam_mu_dtype="", pool_size=0,  # RL prompts from the first pool_size train problems only; 0 = all
                rewards="correct",  # weighted reward terms, critique_jax.rl.rewards ("correct,format:0.1")
                confidence_span="answer")  # the confidence reward's span: "answer" or "derivation" (rl.confidence)
    c.rl.loss = _loss_defaults()
    # Critique in the loop (Critique-GRPO): critique type, refinements kept per group, where a
    # trained critique model lives (a train_critic run directory), and the prompt buckets of
    # critique and refinement prompts. sft_refine_every > 0 adds a refinement-format SFT batch
    # (problem, planted wrong solution, rule critique -> correct solution) every that many steps.
    # sft_refine_target: the target of those batches, "any" reference solution of the problem or
    # the "source" one the error was planted in. format: what the policy reads of a step critique
    # ("plain": the decisions; "explained": the decisions, with the worked note on the first wrong
    # step, which needs longer refine_buckets). scope (critique_jax.critique.loop): "all" critiques
    # G - n_refine responses per group and keeps n_refine refinements; "all_wrong" samples G and
    # critiques only the groups where all G failed, one refinement replacing a failed response.
    c.critique = dict(type="none", n_refine=1, critic_from="", prompt_buckets=(64,), refine_buckets=(112,),
                      sft_refine_every=0, sft_refine_target="any", format="plain", scope="all")
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
    # wandb: a Weights & Biases project ("" = off), wandb_mode online | offline (critique_jax.wandb_log).
    c.log = dict(tensorboard=True, progress=True, wandb="", wandb_mode="online")
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
