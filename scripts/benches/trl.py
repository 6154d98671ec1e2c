"""Peer benchmark: our GRPO step and sampler against TRL's GRPOTrainer and HF generate, one process.

Needs the ``peers`` extra (torch, transformers, trl, accelerate: imported inside :func:`run` only).
torch: CPU, ``torch.set_num_threads(os.cpu_count())`` (every core; ``--torch-threads``: on a machine
busy with other work torch's OpenMP threads wait on each other, many-fold slower); JAX: bench.py's
devices (``--cpu-devices N``: the CPU as N devices; our trainer's mesh and sampler shard the batch
over them, one thread each, where torch splits each op over its threads).

Matched on both sides:

* model: ``--preset`` (qwen2 family) with the countdown tokenizer's vocabulary. One freshly
  initialised model of ours (``nnx.Rngs(0)``) is written as a HF checkpoint
  (``critique_jax.models.hf.save_pretrained``: ``hf_config`` maps d_model, n_layers, n_heads,
  n_kv_heads, head_dim, d_ff, vocab, rope theta, rms eps, tied embeddings; qkv bias is Qwen2's);
  TRL and HF generate load it as a ``transformers.Qwen2ForCausalLM`` and our trainer starts from
  it too (``model.hf_dir``), so both start from the same weights, in float32;
* tokenizer: the project's SentencePiece model (the quickstart's ``countdown`` tokenizer), wrapped
  for TRL as a ``transformers.PreTrainedTokenizer`` that calls the same SentencePiece model (ids,
  pad 0, eos 3, no bos); prompt encodings are checked equal to ours before timing, and decoding
  drops pad/bos/eos as ours does;
* prompts: the countdown problems our trainer draws (its train split, ``BatchIterator`` order),
  written by our prompt format (plain text with marker tokens, not chat), in the same order
  (``shuffle_dataset=False``); reward: the task's 0/1 verifier (``task.rewards``) on the decoded
  completions;
* the step: ``prompts x group`` completions of at most ``new_tokens`` tokens (both stop a sample
  at the end token), temperature 1, top_k 0, top_p 1; group-normalised advantages ((r - mean) /
  (std + eps)); the plain clipped surrogate (clip 0.2 both sides) averaged over all response
  tokens of the batch (ours: loss ``ppo``, agg ``token-mean``; TRL: ``loss_type="dapo"``, the same
  normaliser with ``gradient_accumulation_steps=1``); one forward/backward per sample per step and
  one AdamW update (ours: ``rl.epochs=1``, ``rl.minibatches=1``; TRL: ``num_iterations=1``), its
  gradient in ``--micro-batches`` row blocks on both sides (ours: ``rl.micro_batches``; TRL:
  ``gradient_accumulation_steps`` with one generation per optimiser step); no
  reference model (``ref_kl_coef=0`` / ``beta=0``); no old-log-prob pass (ours:
  ``recompute_old_logp=False``, the sampler's log-probs; TRL: with num_iterations=1 it uses the
  detached current log-probs); no entropy-change pass (``rl.entropy_change=False``); constant lr =
  the RL lr (1e-4), grad clip 1.0, weight decay 0, Adam betas (0.9, 0.999).

What differs: rollout = sampling + decode + scoring on both sides, but ours also packs the batch
into fixed shapes and computes advantages on the host in it, TRL also pads, computes advantages and
logs metrics in it; sampling: ours prefills each prompt once for its group (HF: every copy), keeps a
fixed-size KV cache (HF: a growing one) and records each token's log-prob and entropy; both stop when
every sample has ended; TRL pads the update batch to the longest completion, ours to ``new_tokens``;
both compute token entropies in the update forward (TRL under no_grad, ours fused in the log-prob
pass); TRL's advantage eps is 1e-4 (ours 1e-6) and its ratio is exactly 1 (ours: the sampler's
log-probs vs the update forward's, equal up to float error); our step includes fetching the prompt
batch, TRL's dataloader fetch happens just before ``on_step_begin``; the samples differ (separate
RNGs), so response lengths may differ: compare ``resp_tokens``. TRL does not compile
(``disable_compile``); ours compiles in its first step, excluded like TRL's warm-up step.

Columns: ``rollout_s`` (ours: perf/sample_s + perf/score_s; TRL: ``_generate_and_score_completions``),
``update_s`` (ours: perf/update_s; TRL: step - rollout), ``step_s`` (ours: perf/step_s; TRL:
on_step_begin -> on_step_end), ``resp_tokens`` (response tokens per step), ``generate_s`` (HF
``model.generate`` / our ``sampler._generate``: ``prompts x group`` samples of exactly
``new_tokens`` tokens after ``--prompt-len`` random prompt tokens, no early stop); medians over
every round's timed steps (and as many generate calls per round, HF's and ours alternating). Row
``trl/ours``: TRL's value over ours (> 1: we are faster).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np

from benches.rl import bench_config

_TIMED = ("rollout_s", "update_s", "step_s", "resp_tokens", "generate_s")


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="small", help="model preset (critique_jax.models.config.SIZES)")
    p.add_argument("--prompts", type=int, default=8, help="prompts per step / per generate call")
    p.add_argument("--group", type=int, default=8, help="samples per prompt (GRPO group, num_generations)")
    p.add_argument("--new-tokens", type=int, default=64,
                   help="max response tokens (generate: exact); the trainer needs >= 30 (countdown solutions)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per framework per round (after 1 warm-up)")
    p.add_argument("--micro-batches", type=int, default=1,
                   help="ours: rl.micro_batches (the step's gradient summed over row blocks); TRL: "
                        "gradient_accumulation_steps (per-device batch = samples / micro-batches)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    p.add_argument("--prompt-len", type=int, default=None,
                   help="generate only: prompt tokens (default: the quickstart's prompt bucket)")
    p.add_argument("--policy", default=None,
                   help="a train run directory of the quickstart's task and --preset: both sides start from its "
                        "sft_policy (a trained policy, early-stopping responses) instead of a random initialisation")
    p.add_argument("--torch-threads", type=int, default=os.cpu_count(),
                   help="torch.set_num_threads (default: os.cpu_count(), every core)")


def our_config(args: argparse.Namespace, hf_dir: str):
    """The quickstart resized (benches.rl.bench_config), with TRL's GRPO semantics, from ``hf_dir``."""
    c = bench_config(argparse.Namespace(**vars(args), loss="ppo"), args.preset, args.prompts)
    c.model.hf_dir = hf_dir
    c.rl.update(dict(epochs=1, minibatches=1, recompute_old_logp=False, entropy_change=False,
                     advantage="grpo", rewards="correct", lr_schedule="constant", warmup_steps=0))
    c.rl.loss.update(dict(ref_kl_coef=0.0, entropy_coef=0.0, agg="token-mean"))
    c.rl.loss.ppo.update(dict(clip_low=0.2, clip_high=0.2))
    c.sampling.update(dict(temperature=1.0, top_p=1.0, top_k=0))
    return c


def _our_run(args: argparse.Namespace, workdir: str):
    """Our :class:`~critique_jax.runs.run.Run` of the bench config (data, tokenizer, prompt format,
    RL pool, model definition) and the starting model: a fresh one (``nnx.Rngs(0)``) or, with
    ``--policy``, that train run's ``sft_policy`` (checked like ``init_from``: task, preset,
    tokenizer). Its positions cover ``--prompt-len`` for the generate timing too."""
    import dataclasses

    from flax import nnx

    from critique_jax.models import Transformer
    from critique_jax.runs import roles
    from critique_jax.runs.run import setup

    c = our_config(args, hf_dir="")
    run = setup(c, workdir)
    width = max(max(c.sampling.prompt_buckets), args.prompt_len) + args.new_tokens
    model = Transformer(dataclasses.replace(run.model_cfg, max_seq_len=width), rngs=nnx.Rngs(0))
    if args.policy:
        nnx.update(model, roles.restore_policy(run, roles.check_policy_run(c, args.policy, "--policy")))
    return run, model


def _hf_tokenizer(tok):
    """The project's SentencePiece tokenizer as a transformers (python-backend) tokenizer."""
    import transformers

    class ProjectTokenizer(transformers.PreTrainedTokenizer):
        model_input_names = ["input_ids", "attention_mask"]
        vocab_size = tok.vocab_size

        def __init__(self, **kw):
            self._vocab = {tok.id_to_piece(i): i for i in range(tok.vocab_size)}
            ids = dict(pad_token=tok.pad_id, unk_token=tok.unk_id, bos_token=tok.bos_id, eos_token=tok.eos_id)
            super().__init__(**{k: tok.id_to_piece(i) for k, i in ids.items()}, padding_side="left",
                             clean_up_tokenization_spaces=False, **kw)

        def get_vocab(self) -> dict[str, int]:
            return dict(self._vocab)

        def _tokenize(self, text, **kw):
            return [tok.id_to_piece(i) for i in tok.encode_prompt(text)]

        def _convert_token_to_id(self, token):
            return self._vocab.get(token, tok.unk_id)

        def _convert_id_to_token(self, index):
            return tok.id_to_piece(index)

        def _decode(self, token_ids, skip_special_tokens=False, **kw):
            ids = [token_ids] if isinstance(token_ids, int) else [int(i) for i in token_ids]
            return tok.decode(ids) if skip_special_tokens else "".join(map(tok.id_to_piece, ids)).replace("▁", " ")

    return ProjectTokenizer()


def _ours_round(args, c) -> list[dict]:
    """One run of our trainer: its timed steps' (rollout, update, step, tokens)."""
    from critique_jax.metrics import read_metrics
    from critique_jax.runs import train

    with tempfile.TemporaryDirectory(prefix="bench_trl_ours_") as workdir:
        train(c, workdir, resume=False, stop_at=args.steps + 1)
        steps = [r for r in read_metrics(workdir) if "perf/step_s" in r][1:]
    n = args.prompts * args.group
    return [dict(rollout_s=r["perf/sample_s"] + r["perf/score_s"], update_s=r["perf/update_s"],
                 step_s=r["perf/step_s"], resp_tokens=r["train/response_len"] * n) for r in steps]


def _trl_round(args, c, hf_dir: str, hf_tok, dataset, reward) -> list[dict]:
    """One TRL GRPOTrainer run of 1 + steps steps: the timed steps' (rollout, update, step, tokens)."""
    import torch
    import transformers
    from trl import GRPOConfig, GRPOTrainer

    steps: list[float] = []  # on_step_begin -> on_step_end of each optimiser step

    class Clock(transformers.TrainerCallback):
        def on_step_begin(self, *a, **kw):
            steps.append(-time.perf_counter())

        def on_step_end(self, *a, **kw):
            steps[-1] += time.perf_counter()

    model = transformers.Qwen2ForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    with tempfile.TemporaryDirectory(prefix="bench_trl_") as out:
        cfg = GRPOConfig(
            output_dir=out, use_cpu=True, bf16=False, fp16=False, report_to=[], logging_strategy="no",
            save_strategy="no", disable_tqdm=True, seed=c.seed, max_steps=args.steps + 1,
            per_device_train_batch_size=args.prompts * args.group // args.micro_batches,
            gradient_accumulation_steps=args.micro_batches,
            num_generations=args.group, max_completion_length=args.new_tokens, temperature=1.0, top_k=0,
            top_p=1.0, num_iterations=1, beta=0.0, loss_type="dapo", scale_rewards="group", epsilon=0.2,
            learning_rate=c.rl.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=c.rl.weight_decay,
            max_grad_norm=c.rl.grad_clip, adam_beta1=0.9, adam_beta2=0.999, shuffle_dataset=False,
            use_vllm=False, dataloader_num_workers=0)
        trainer = GRPOTrainer(model=model, reward_funcs=reward, args=cfg, train_dataset=dataset,
                              processing_class=hf_tok, callbacks=[Clock()])
        trainer.remove_callback(transformers.PrinterCallback)  # the end-of-training summary line
        # one generation per optimiser step, so no old-log-prob pass (TRL computes one when they differ)
        assert trainer.ref_model is None and cfg.steps_per_generation == cfg.gradient_accumulation_steps, \
            "a reference or old-log-prob pass"
        generate_and_score, rollouts = trainer._generate_and_score_completions, []

        def timed(*a, **kw):
            t0 = time.perf_counter()
            out_ = generate_and_score(*a, **kw)
            rollouts.append((time.perf_counter() - t0, float(out_["completion_mask"].sum())))
            return out_

        trainer._generate_and_score_completions = timed
        trainer.train()
    if len(steps) != args.steps + 1 or len(rollouts) != args.steps + 1:
        raise RuntimeError(f"TRL ran {len(steps)} steps and {len(rollouts)} rollouts, expected {args.steps + 1}")
    return [dict(rollout_s=r, update_s=s - r, step_s=s, resp_tokens=t) for s, (r, t) in list(zip(steps, rollouts))[1:]]


def _generators(args, run, model, hf_dir: str, tok):
    """(HF generate, our sampler) closures over the same random prompts; each returns seconds. Ours
    runs as the trainer's rollouts do: on the run's mesh (every device, ``--cpu-devices``), the
    batch sharded over it, the parameters in the run's layout."""
    import jax
    import torch
    import transformers
    from flax import nnx

    from critique_jax.sampling import SamplerConfig, pad_prompts, sample_keys
    from critique_jax.sampling import sampler as sampler_lib

    b, g, plen, new = args.prompts, args.group, args.prompt_len, args.new_tokens
    prompts = np.random.default_rng(0).integers(4, tok.vocab_size, (b, plen))
    hf = transformers.Qwen2ForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    ids = torch.as_tensor(prompts)

    def hf_call() -> float:
        t0 = time.perf_counter()
        with torch.no_grad():
            out = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0,
                              top_k=0, top_p=1.0, max_new_tokens=new, min_new_tokens=new, num_return_sequences=g,
                              use_cache=True, pad_token_id=tok.pad_id, eos_token_id=tok.eos_id)
        assert out.shape == (b * g, plen + new), out.shape
        return time.perf_counter() - t0

    graphdef, state = nnx.split(model)
    state = jax.device_put(state, run.param_sh)
    pb = pad_prompts([list(p) for p in prompts], [plen], tok.pad_id)
    inputs = [run.shard(x) for x in (pb.tokens, pb.valid, sample_keys(0, range(b), g), np.ones((b * g,), np.float32),
                                      np.zeros((b * g,), np.int32), np.ones((b * g,), np.float32))]
    sc = SamplerConfig(max_new_tokens=new, eos_ids=(-1,), pad_id=tok.pad_id)  # never ends early

    def our_call() -> float:
        t0 = time.perf_counter()
        with jax.set_mesh(run.mesh):
            jax.block_until_ready(sampler_lib._generate(graphdef, state, *inputs, cfg=sc, group_size=g))
        return time.perf_counter() - t0

    return hf_call, our_call


def run(args: argparse.Namespace) -> list[dict]:
    import datasets
    import torch
    import transformers

    from critique_jax.data import BatchIterator
    from critique_jax.models.hf import save_pretrained
    from critique_jax.runs.run import rl_pool

    torch.set_num_threads(args.torch_threads)
    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    with (tempfile.TemporaryDirectory(prefix="bench_trl_model_") as hf_dir,
          tempfile.TemporaryDirectory(prefix="bench_trl_setup_") as setup_dir):
        args.prompt_len = args.prompt_len or max(our_config(args, hf_dir).sampling.prompt_buckets)
        run, model = _our_run(args, setup_dir)
        tok, task = run.tok, run.task
        save_pretrained(model, hf_dir, tokenizer=tok)
        c = our_config(args, hf_dir)
        it = BatchIterator(rl_pool(run), c.rl.prompts_per_step, seed=c.seed + 1)  # the trainer's draws, in order
        problems = [ex.problem for _ in range(args.steps + 1) for ex in next(it)]
        texts = [run.prompts.solve(p.question) for p in problems]
        hf_tok = _hf_tokenizer(tok)
        if hf_tok(text=texts)["input_ids"] != [tok.encode_prompt(t) for t in texts]:
            raise AssertionError("the HF tokenizer wrapper encodes the prompts differently from ours")
        dataset = datasets.Dataset.from_dict({"prompt": texts, "pid": list(range(len(texts)))})

        def countdown_reward(completions, pid, **_):
            return [float(r) for r in task.rewards([problems[i] for i in pid], completions)]

        hf_call, our_call = _generators(args, run, model, hf_dir, tok)
        hf_call(), our_call()  # warm-up / compile, excluded
        timed: dict[str, dict[str, list[float]]] = {"critique_jax": {}, "trl": {}}
        for r in range(args.rounds):
            sides = {"critique_jax": _ours_round(args, c),
                     "trl": _trl_round(args, c, hf_dir, hf_tok, dataset, countdown_reward)}
            for i in range(args.steps):  # as many generate calls as timed steps, alternating
                sides["trl"][i]["generate_s"] = hf_call()
                sides["critique_jax"][i]["generate_s"] = our_call()
            for name, steps in sides.items():
                for k in steps[0]:
                    timed[name].setdefault(k, []).extend(s[k] for s in steps if k in s)
            med = ", ".join(f"{name} {statistics.median(vals['step_s']):.3g}" for name, vals in timed.items())
            print(f"# round {r + 1}/{args.rounds}: median step_s so far: {med}", flush=True)

    rows = []
    for name, vals in timed.items():
        row = dict(framework=name, preset=args.preset, samples=args.prompts * args.group,
                   new_tokens=args.new_tokens, prompt_len=args.prompt_len, timed_steps=len(vals["step_s"]))
        row |= {k: statistics.median(vals[k]) for k in _TIMED}
        rows.append(row)
    rows[1]["torch_threads"] = torch.get_num_threads()
    rows.append(dict(framework="trl/ours") | {k: rows[1][k] / rows[0][k] for k in _TIMED})
    return rows
