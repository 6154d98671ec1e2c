"""The step-level critique model's pure parts: validation of the ``critic`` section and the
prompt width / response length of its examples. Training and evaluation are the train_critic
program, :mod:`critique_jax.runs.critic_run`.

Widths: the critic's prompt width P is the longest critique prompt and its response length L
the longest target (with the end token) over the training and evaluation examples, unless
``critic.prompt_width`` / ``critic.max_new_tokens`` fix them (then a longer example is an
error naming the key). The model's ``max_seq_len`` is P + L.
"""

from __future__ import annotations

from typing import Sequence

import ml_collections

from critique_jax.critique import data as data_lib
from critique_jax.critique.data import CritiqueExample
from critique_jax.models import FAMILIES, SIZES
from critique_jax.text import Tokenizer


def validate_critic(config: ml_collections.ConfigDict, shards: int) -> None:
    """Checks the ``critic`` section; each error names the key and the expected value.

    shards: batch shards of the mesh (data x fsdp); batches must be multiples of it.
    """
    c = config.critic

    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ValueError(f"config critic.{msg}")

    need(c.preset in SIZES, f"preset={c.preset!r}: unknown model preset; expected one of {sorted(SIZES)}")
    need(c.family in FAMILIES, f"family={c.family!r}: unknown model family; expected one of {sorted(FAMILIES)}")
    need(c.steps >= 1, f"steps={c.steps}: expected >= 1")
    need(0 <= c.warmup_steps <= c.steps,
         f"warmup_steps={c.warmup_steps}: expected between 0 and critic.steps={c.steps}")
    need(c.lr > 0, f"lr={c.lr}: expected > 0")
    need(c.weight_decay >= 0, f"weight_decay={c.weight_decay}: expected >= 0")
    for key in ("batch_size", "eval_batch"):
        need(c[key] >= 1 and c[key] % shards == 0,
             f"{key}={c[key]}: must be a positive multiple of the {shards} batch shards (mesh data x fsdp)")
    need(0.0 <= c.wrong_fraction <= 1.0, f"wrong_fraction={c.wrong_fraction}: expected a value in [0, 1]")
    need(c.wrong_per_solution >= 1, f"wrong_per_solution={c.wrong_per_solution}: expected >= 1")
    need(c.target_format in data_lib.TARGET_FORMATS,
         f"target_format={c.target_format!r}: expected one of {data_lib.TARGET_FORMATS}")
    for key in ("prompt_width", "max_new_tokens"):
        need(c[key] >= 0, f"{key}={c[key]}: expected >= 0 (0 = from the data)")
    need(c.policy_samples >= 0,
         f"policy_samples={c.policy_samples}: expected >= 0 (0 = policy samples in the held-out set only)")
    need(c.policy_samples == 0 or bool(c.policy_from),
         f"policy_samples={c.policy_samples} needs critic.policy_from (the train run whose SFT policy samples them)")
    for key in ("log_every", "checkpoint_every", "eval_n_problems"):
        need(c[key] >= 1, f"{key}={c[key]}: expected >= 1")
    for key in ("eval_every", "n_logged_samples"):
        need(c[key] >= 0, f"{key}={c[key]}: expected >= 0")


def resolve_widths(tok: Tokenizer, examples: Sequence[CritiqueExample], prompt_width: int,
                   response_len: int) -> tuple[int, int]:
    """``(P, L)``: ``prompt_width`` / ``response_len``, or where 0 the longest prompt / target
    (with the end token) of ``examples``; an example that does not fit is an error naming it
    and the config key."""
    prompts, targets = data_lib.token_lengths(tok, examples)
    width, length = prompt_width or int(prompts.max()), response_len or int(targets.max())
    for lengths, limit, what, key in ((prompts, width, "prompt", "prompt_width"),
                                      (targets, length, "target", "max_new_tokens")):
        if lengths.max() > limit:
            e = examples[int(lengths.argmax())]
            raise ValueError(f"{e.problem.uid} ({e.source}): critique {what} of {lengths.max()} tokens exceeds "
                             f"critic.{key}={limit}; raise it or set 0 (= the longest {what} in the data)")
    return width, length
