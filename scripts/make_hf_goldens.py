"""Writes tests/goldens/hf/<family>/: tiny random HF checkpoints and transformers' own outputs.

Run by hand in a separate virtual environment with CPU torch and transformers (never a
dependency of the project or of its tests):

    python3 -m venv /tmp/goldenvenv
    /tmp/goldenvenv/bin/pip install torch==2.13.0 transformers safetensors tokenizers jinja2 numpy
    /tmp/goldenvenv/bin/python scripts/make_hf_goldens.py --jax-python .venv/bin/python

Per family (qwen2, qwen3, llama with llama3 RoPE scaling, gemma, gemma2 with a sliding window
shorter than the sequences): ``config.json`` + float32 safetensors (qwen3 as 2 shards + index),
``input_ids.npy`` / ``attention_mask.npy`` (a left-padded batch), ``logits.npy`` (float32
[B, T, V], position_ids as transformers computes them for left padding: cumsum(mask) - 1)
and ``generated.npy`` (greedy ``generate`` tokens, pad 0, eos 1). With ``--jax-python``, the
checkpoint is also loaded by critique_jax, exported with ``save_pretrained``, loaded back into
transformers, and its logits compared (the max difference is printed).

tests/goldens/hf/tokenizer/: a small byte-level BPE ``tokenizer.json`` with a ChatML-style
chat template (bos_token, namespace, raise_exception, whitespace control) and several end
ids in ``generation_config.json``, saved by transformers, and ``cases.json``: transformers'
``encode``/``decode`` and ``apply_chat_template`` outputs (text and ids).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import transformers
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "goldens" / "hf"
VOCAB, LENGTHS, T, NEW_TOKENS, PAD, EOS = 256, (12, 9, 5), 12, 6, 0, 1
COMMON = dict(vocab_size=VOCAB, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=128, pad_token_id=PAD, eos_token_id=EOS, bos_token_id=2)
CONFIGS = {
    "qwen2": transformers.Qwen2Config(**COMMON, hidden_size=48, intermediate_size=96, rope_theta=10_000.0,
                                      tie_word_embeddings=True),
    # head_dim 16 != hidden_size / heads = 12: the explicit head_dim matters.
    "qwen3": transformers.Qwen3Config(**COMMON, hidden_size=48, intermediate_size=96, head_dim=16,
                                      rope_theta=10_000.0, tie_word_embeddings=False),
    # original_max_position_embeddings 64: wavelengths above 64 are scaled, 16..64 smoothed.
    "llama": transformers.LlamaConfig(**COMMON, hidden_size=48, intermediate_size=96, rms_norm_eps=1e-5,
                                      rope_theta=10_000.0, tie_word_embeddings=False,
                                      rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                                        high_freq_factor=4.0, original_max_position_embeddings=64)),
    "gemma": transformers.GemmaConfig(**{**COMMON, "num_key_value_heads": 1}, hidden_size=64,
                                      intermediate_size=128, head_dim=16),
    # 3 layers: sliding window 4 on layers 0 and 2; soft-caps small enough to bite.
    "gemma2": transformers.Gemma2Config(**{**COMMON, "num_hidden_layers": 3}, hidden_size=64, intermediate_size=128,
                                        head_dim=16, query_pre_attn_scalar=24, sliding_window=4,
                                        attn_logit_softcapping=5.0, final_logit_softcapping=8.0),
}
MODELS = {"qwen2": transformers.Qwen2ForCausalLM, "qwen3": transformers.Qwen3ForCausalLM,
          "llama": transformers.LlamaForCausalLM, "gemma": transformers.GemmaForCausalLM,
          "gemma2": transformers.Gemma2ForCausalLM}


def randomize(model: torch.nn.Module, gemma: bool, seed: int) -> None:
    """Every parameter random (norms around 1, or around 0 for Gemma's 1 + w) so all of them matter.

    Gemma's embeddings are scaled by sqrt(hidden_size) and tied: at the other weights' scale
    they would swamp the residual stream and greedy decoding would repeat the last token.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name:
                p.copy_(0.2 * noise + (0.0 if gemma else 1.0))
            elif gemma and "embed_tokens" in name:
                p.copy_(noise * 0.2 / model.config.hidden_size ** 0.5)
            else:
                p.copy_(noise * (0.3 if name.endswith("bias") else 0.2))


def batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded [B, T] input_ids and attention_mask."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, VOCAB, (len(LENGTHS), T))
    mask = np.zeros_like(ids)
    for b, n in enumerate(LENGTHS):
        mask[b, T - n:] = 1
    ids = np.where(mask == 1, ids, PAD)
    return torch.tensor(ids), torch.tensor(mask)


def logits_of(model, ids: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=pos).logits.float().numpy()


def save_sharded(model, directory: Path) -> None:
    """The state dict as 2 safetensors shards + model.safetensors.index.json (HF's layout)."""
    state = {k: v.contiguous() for k, v in model.state_dict().items()
             if not (model.config.tie_word_embeddings and k == "lm_head.weight")}
    names = sorted(state)
    halves = [names[: len(names) // 2], names[len(names) // 2:]]
    weight_map = {}
    for i, part in enumerate(halves, 1):
        file = f"model-{i:05d}-of-00002.safetensors"
        save_file({k: state[k] for k in part}, str(directory / file), metadata={"format": "pt"})
        weight_map.update({k: file for k in part})
    total = sum(v.numel() * v.element_size() for v in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def check_export(family: str, directory: Path, jax_python: str, want: np.ndarray, ids, mask) -> float:
    """critique_jax load -> save_pretrained -> transformers load: max |logits - golden| on real tokens."""
    with tempfile.TemporaryDirectory() as tmp:
        code = ("import sys; from critique_jax.models import load_pretrained, save_pretrained; "
                "save_pretrained(load_pretrained(sys.argv[1]), sys.argv[2])")
        env = {"PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"}
        subprocess.run([jax_python, "-c", code, str(directory), tmp], check=True, env=env)
        back = MODELS[family].from_pretrained(tmp, dtype=torch.float32, attn_implementation="eager").eval()
        got = logits_of(back, ids, mask)
    return float(np.abs(np.where(mask.numpy()[..., None] == 1, got - want, 0)).max())


CHAT_TEMPLATE = """{{ bos_token }}
{% set ns = namespace(turns=0) %}
{% for message in messages %}
    {% if message['role'] not in ['system', 'user', 'assistant'] %}
        {{ raise_exception('unknown role: ' + message['role']) }}
    {% endif %}
    {% set ns.turns = ns.turns + 1 %}
<|im_start|>{{ message['role'] }}
{{ message['content'] | trim }}<|im_end|>
{% endfor %}
{% if add_generation_prompt %}
<|im_start|>assistant
{% endif %}"""
CHATS = [
    [{"role": "user", "content": "What is 12 + 7?"}],
    [{"role": "system", "content": "You check arithmetic. "},
     {"role": "user", "content": "Is 3 * 4 = 12 correct?"},
     {"role": "assistant", "content": "Step 1: correct.\nverdict: correct"}],
]
TEXTS = ["What is 12 + 7?", "step 1: 3 * 4 = 12\nverdict: correct", "naïve café <|im_end|> 42"]


def make_tokenizer_goldens() -> None:
    """tests/goldens/hf/tokenizer/: transformers' tokenizer files and its outputs (cases.json)."""
    specials = ["<pad>", "<s>", "<|im_start|>", "<|im_end|>", "<|endoftext|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [t for chat in CHATS for m in chat for t in [m["content"]]] * 20 + TEXTS * 20
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=320, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="<|im_end|>",
                                                pad_token="<pad>", chat_template=CHAT_TEMPLATE)
    directory = OUT / "tokenizer"
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*"):
        old.unlink()
    fast.save_pretrained(directory)
    eos = [fast.convert_tokens_to_ids("<|im_end|>"), fast.convert_tokens_to_ids("<|endoftext|>")]
    transformers.GenerationConfig(bos_token_id=fast.bos_token_id, eos_token_id=eos,
                                  pad_token_id=fast.pad_token_id).save_pretrained(directory)
    back = transformers.AutoTokenizer.from_pretrained(directory)
    cases = dict(
        bos_id=back.bos_token_id, eos_id=back.eos_token_id, pad_id=back.pad_token_id, eos_ids=eos,
        vocab_size=len(back),
        encode=[dict(text=t, ids=back.encode(t, add_special_tokens=False)) for t in TEXTS],
        chats=[dict(messages=c, add_generation_prompt=g, text=back.apply_chat_template(c, tokenize=False,
                                                                                        add_generation_prompt=g),
                    ids=list(back.apply_chat_template(c, tokenize=True, add_generation_prompt=g,
                                                      return_dict=False)))
               for c in CHATS for g in (False, True)],
    )
    for case in cases["encode"]:
        case["decoded"] = back.decode(case["ids"], skip_special_tokens=True)
    (directory / "cases.json").write_text(json.dumps(cases, indent=1, ensure_ascii=False) + "\n")
    print(f"tokenizer: vocab {len(back)}, chat 1: {cases['chats'][1]['text']!r}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jax-python", help="a Python with critique_jax's dependencies, for the export check")
    args = ap.parse_args()
    make_tokenizer_goldens()
    for seed, (family, config) in enumerate(CONFIGS.items()):
        torch.manual_seed(seed)
        config._attn_implementation = "eager"
        model = MODELS[family](config).eval().float()
        randomize(model, family.startswith("gemma"), seed)
        directory = OUT / family
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.glob("*"):
            old.unlink()
        if family == "qwen3":
            model.config.save_pretrained(directory)
            save_sharded(model, directory)
        else:
            model.save_pretrained(directory)
        ids, mask = batch(seed)
        logits = logits_of(model, ids, mask)
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False,
                             pad_token_id=PAD, eos_token_id=EOS, return_dict_in_generate=True, output_logits=True)
        gen = out.sequences[:, T:].numpy()
        top2 = np.sort(np.stack([x.float().numpy() for x in out.logits]), axis=-1)[..., -2:]  # [steps, B, 2]
        np.save(directory / "input_ids.npy", ids.numpy().astype(np.int32))
        np.save(directory / "attention_mask.npy", mask.numpy().astype(bool))
        np.save(directory / "logits.npy", logits.astype(np.float32))
        np.save(directory / "generated.npy", gen.astype(np.int32))
        line = (f"{family}: logits {logits.shape}, generated {gen.tolist()}, "
                f"smallest greedy top-2 logit margin {float((top2[..., 1] - top2[..., 0]).min()):.3g}")
        if args.jax_python:
            line += f", export max |diff| {check_export(family, directory, args.jax_python, logits, ids, mask):.3g}"
        print(line, flush=True)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}", file=sys.stderr)


if __name__ == "__main__":
    main()
