"""The pretrained path end to end: GSM8K-format files, a tiny Hugging Face checkpoint with a chat
template, 2 RL steps with chat-template prompts, a user reward and the RLSF confidence reward (the
checkpoint is the reference policy, in the ``sharded`` layout; the span where the answer is derived),
then the evaluate program on the run."""

import json
import math

import pytest

from critique_jax.metrics import read_metrics
from critique_jax.runs import train
from critique_jax.runs.evaluation_run import EvalSettings, evaluate_policy
from critique_jax.runs.policies import load_policy

from test_task_files import GSM_ROWS, write_jsonl
from test_trainer import _write_checkpoint, tiny_config

SCHEDULE_EARLY = True  # a long file: conftest schedules it early under pytest-xdist

BREVITY = "def brevity(problem, completion):\n    return -len(completion) / 1000.0\n"


@pytest.fixture(scope="module")
def gsm8k_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gsm8k")
    train_file = write_jsonl(tmp / "train.jsonl", GSM_ROWS[:8])
    test_file = write_jsonl(tmp / "test.jsonl", GSM_ROWS[8:])
    (tmp / "my_rewards.py").write_text(BREVITY)
    hf_dir = _write_checkpoint(tmp / "ckpt", max_seq_len=256)
    cfg = tiny_config(tmp, **{
        "task.name": "gsm8k", "task.train_files": (train_file,), "task.test_files": (test_file,),
        "task.difficulties": tuple(range(1, 9)), "task.n_train": 8, "task.n_test": 4,
        "model.hf_dir": str(hf_dir), "sft.steps": 0, "rl.steps": 2, "rl.minibatches": 1, "rl.loss.name": "ppo",
        "rl.loss.ref_kl_coef": 0.0, "rl.recompute_old_logp": False, "rl.entropy_change": False,
        "rl.rewards": f"correct,{tmp / 'my_rewards.py'}:brevity:0.5,confidence:0.25",
        "rl.confidence_span": "derivation", "mesh.reference": "sharded",  # over all 8 devices
        "prompt.instruction": "End with 'answer: <number>'.", "sampling.prompt_buckets": (128,),
        "sampling.max_new_tokens": 72, "eval.group_size": 4, "eval.every": 2})
    train(cfg, str(tmp / "run"))
    return tmp, cfg


def test_rl_on_gsm8k_files_with_chat_prompts(gsm8k_run):
    tmp, cfg = gsm8k_run
    rows = read_metrics(tmp / "run")
    rl = [r for r in rows if "train/reward" in r]
    assert len(rl) == 2 and all("reward/brevity" in r and "reward/correct" in r for r in rl)
    for r in rl:  # the logged reward is the weighted sum of its terms
        conf, right, area = r["reward/confidence"], r["reward/correct"], r["reward/confidence_auroc"]
        assert r["train/reward"] == pytest.approx(right + 0.5 * r["reward/brevity"] + 0.25 * conf, abs=1e-5)
        # RLSF: the reference policy's answer confidence, and its AUROC against the verifier (NaN
        # when the batch is all right or all wrong)
        assert 0 <= conf <= 1 and ((0 <= area <= 1) if 0 < right < 1 else math.isnan(area))
    policy = load_policy(tmp / "run", "final")
    assert policy.run.prompts.kind == "chat"
    prompt = policy.run.prompts.solve(GSM_ROWS[0]["question"])
    assert "<|im_start|>user\nTom has 0 apples" in prompt and prompt.endswith("<|im_start|>assistant\n")
    assert "End with 'answer: <number>'." in prompt


def test_evaluate_the_gsm8k_run(gsm8k_run):
    tmp, _ = gsm8k_run
    policy = load_policy(tmp / "run", "final")
    settings = EvalSettings(source=policy.source, split="test", n_problems=0, samples=4, temperature=1.0, seed=0,
                            batch_prompts=8)
    rep = evaluate_policy(policy.run, policy.params, str(tmp / "eval"), settings)
    assert rep["n_problems"] == 4 and 0.0 <= rep["pass@1"] <= rep["pass@4"] <= 1.0
    assert rep["split"] == "test" and json.loads((tmp / "eval" / "report.json").read_text())["pass@4"] == rep["pass@4"]
    assert "maj@4" in (tmp / "eval" / "report.md").read_text()


def test_critique_grpo_on_gsm8k_files_with_chat_prompts(gsm8k_run, tmp_path):
    """One Critique-GRPO step (ground-truth critiques) from the same checkpoint and files: the
    critique and refinement prompts are chat turns too."""
    tmp, cfg = gsm8k_run
    hf_dir = _write_checkpoint(tmp_path / "ckpt", max_seq_len=640)  # room for refinement prompts
    cfg = tiny_config(tmp_path, **{**{k: cfg[s][f] for k in (
        "task.name", "task.train_files", "task.test_files", "task.difficulties", "task.n_train", "task.n_test",
        "prompt.instruction", "sampling.prompt_buckets", "sampling.max_new_tokens")
        for s, f in [k.split(".")]}, "model.hf_dir": str(hf_dir),
        "sft.steps": 0, "rl.steps": 1, "rl.minibatches": 1, "rl.group_size": 3, "rl.loss.name": "critique_grpo",
        "rl.loss.ref_kl_coef": 0.0, "rl.entropy_change": False, "critique.type": "ground_truth",
        "critique.prompt_buckets": (320,), "critique.refine_buckets": (544,), "eval.group_size": 3,
        "eval.n_problems": 4})
    train(cfg, str(tmp_path / "cg"))
    rows = read_metrics(tmp_path / "cg")
    step = [r for r in rows if "critique/refine_success_on_failed" in r or "critique/initial_reward" in r]
    assert step and "train/reward" in step[-1]
    refine = load_policy(tmp_path / "cg", "final").run.prompts.refine("Q?", "answer: 1", "verdict: wrong")
    assert refine.count("<|im_start|>user") == 2 and "<|im_start|>assistant\nanswer: 1<|im_end|>" in refine
