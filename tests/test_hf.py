"""HF checkpoints: logits and greedy tokens equal transformers' own (goldens), export round
trips, sharded loading, clear errors; HF tokenizers and chat templates equal transformers'.
Goldens: scripts/make_hf_goldens.py (torch is not needed here)."""

import dataclasses
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import jinja2
import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P
from safetensors.numpy import load_file, save_file

from critique_jax.models import (FAMILIES, Transformer, config_from_hf, load_pretrained, model_config, param_count,
                                 positions_from_valid, save_pretrained)
from critique_jax.models.hf import hf_config
from critique_jax.analysis.state_memory import estimate, table
from critique_jax.models.hf.published import PUBLISHED
from critique_jax.parallel.mesh import make_mesh
from critique_jax.parallel.sharding import param_shardings, spec_for
from critique_jax.rl.policy_init import pretrained_params
from critique_jax.rl.rollout import pack_pairs
from critique_jax.sampling.sampler import SamplerConfig, generate, sample_keys
from critique_jax.text import (MARKERS, HFTokenizer, critique_prompt, load_tokenizer, refine_prompt, solve_prompt,
                               train_tokenizer)

GOLDENS = Path(__file__).parent / "goldens" / "hf"
HF_FAMILIES = ["gemma", "gemma2", "llama", "qwen2", "qwen3"]
BF16_TOL = 0.05  # max |logit diff| of a bfloat16 load, relative to max |logit|


def _golden(family: str) -> dict[str, np.ndarray]:
    return {k: np.load(GOLDENS / family / f"{k}.npy") for k in ("input_ids", "attention_mask", "logits", "generated")}


@nnx.jit
def _forward(model: Transformer, tokens: jax.Array, valid: jax.Array) -> jax.Array:
    hidden, _ = model(tokens, positions_from_valid(valid), valid)
    return model.logits(hidden)


def _logits(model: Transformer, g: dict[str, np.ndarray]) -> np.ndarray:
    return np.asarray(_forward(model, jnp.asarray(g["input_ids"]), jnp.asarray(g["attention_mask"])))


def _max_diff(got: np.ndarray, want: np.ndarray, valid: np.ndarray) -> float:
    return float(np.abs(np.where(valid[..., None], got - want, 0.0)).max())


@pytest.fixture(scope="module")
def loaded() -> dict[str, Transformer]:
    return {f: load_pretrained(GOLDENS / f) for f in HF_FAMILIES}


@pytest.mark.parametrize("family", HF_FAMILIES)
def test_logits_equal_transformers(family, loaded):
    g = _golden(family)
    diff = _max_diff(_logits(loaded[family], g), g["logits"], g["attention_mask"])
    print(f"{family}: max |logits - transformers| = {diff:.2e}")
    assert diff <= 1e-4


@pytest.fixture(scope="module")
def loaded_bf16() -> dict[str, Transformer]:
    return {f: load_pretrained(GOLDENS / f, dtype="bfloat16") for f in ("gemma2", "llama")}


@pytest.mark.parametrize("family", ["gemma2", "llama"])
def test_bfloat16_load(family, loaded_bf16):
    model = loaded_bf16[family]
    assert model.embed.embedding[...].dtype == jnp.bfloat16
    g = _golden(family)
    diff = _max_diff(_logits(model, g), g["logits"], g["attention_mask"])
    print(f"{family}: bfloat16 max |diff| = {diff:.3f} of max |logit| {np.abs(g['logits']).max():.2f}")
    assert diff <= BF16_TOL * np.abs(g["logits"]).max()


# The sampler compiles once per model (~8 s here): the families whose decode differs most
# (gemma2: sliding window over the cache, soft-caps; llama: RoPE scaling; qwen3: q/k norms).
# qwen2 and gemma decode is checked against teacher forcing in test_model.py.
@pytest.mark.parametrize("family", ["gemma2", "llama", "qwen3"])
def test_kv_cached_greedy_decode_equals_generate(family, loaded):
    g = _golden(family)
    n_new = g["generated"].shape[1]
    out = generate(loaded[family], jnp.asarray(g["input_ids"]), jnp.asarray(g["attention_mask"]),
                   sample_keys(0, range(len(g["input_ids"])), 1),
                   SamplerConfig(max_new_tokens=n_new, eos_ids=(1,), pad_id=0), temperature=0.0)
    np.testing.assert_array_equal(np.asarray(out.tokens), g["generated"])


@pytest.mark.parametrize("family", HF_FAMILIES)
def test_export_reload_same_logits(family, loaded, tmp_path):
    save_pretrained(loaded[family], tmp_path)
    src = GOLDENS / family
    want_names = set().union(*(load_file(f).keys() for f in src.glob("*.safetensors")))
    assert set(load_file(tmp_path / "model.safetensors")) == want_names
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == family
    back = load_pretrained(tmp_path)
    assert back.cfg == loaded[family].cfg
    g = _golden(family)
    np.testing.assert_array_equal(_logits(back, g), _logits(loaded[family], g))


def test_sharded_files_on_a_mesh_equal_single_device(loaded):
    """qwen3's goldens are 2 safetensors shards + index; placed on a 2x2x2 (data, fsdp, tensor) mesh."""
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    model = load_pretrained(GOLDENS / "qwen3", mesh=mesh)
    q = model.layers[0].attn.q_proj.kernel[...]
    assert q.sharding.spec == spec_for("layers/0/attn/q_proj/kernel", q.shape, mesh)
    assert len(q.addressable_shards) == 8 and q.addressable_shards[0].data.shape == (24, 32)
    g = _golden("qwen3")
    np.testing.assert_allclose(_logits(model, g), _logits(loaded["qwen3"], g), atol=1e-5)


def test_scanned_layers_load_stacked_and_export_per_layer(loaded, tmp_path):
    """With ``scan_layers`` the run's loader stacks each kind of layer parameter ([n_layers, ...],
    the layer axis unsharded on a 2x2x2 mesh) and the export unstacks them: the checkpoint's
    tensors again, and the per-layer model's logits."""
    cfg = dataclasses.replace(loaded["qwen3"].cfg, scan_layers=True)
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
    model = nnx.merge(graphdef, pretrained_params(GOLDENS / "qwen3", cfg, mesh, param_shardings(abstract, mesh)))
    q = model.layers.attn.q_proj.kernel[...]
    assert q.shape[0] == cfg.n_layers and q.sharding.spec == P(None, "fsdp", "tensor")
    g = _golden("qwen3")
    np.testing.assert_allclose(_logits(model, g), _logits(loaded["qwen3"], g), atol=1e-5)
    save_pretrained(model, tmp_path)
    want = {k: v for f in (GOLDENS / "qwen3").glob("*.safetensors") for k, v in load_file(f).items()}
    got = load_file(tmp_path / "model.safetensors")
    assert set(got) == set(want)
    for name, arr in want.items():
        np.testing.assert_array_equal(got[name], arr)


def test_separate_param_dtype_and_max_seq_len():
    model = load_pretrained(GOLDENS / "qwen2", dtype="bfloat16", param_dtype="float32", max_seq_len=64)
    assert (model.cfg.dtype, model.cfg.param_dtype, model.cfg.max_seq_len) == ("bfloat16", "float32", 64)
    assert model.layers[0].attn.q_proj.kernel[...].dtype == jnp.float32


def test_bfloat16_export_stays_bfloat16(loaded_bf16, tmp_path):
    model = loaded_bf16["gemma2"]
    save_pretrained(model, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert load_file(tmp_path / "model.safetensors")["model.norm.weight"].dtype == ml_dtypes.bfloat16
    g = _golden("gemma2")
    np.testing.assert_array_equal(_logits(load_pretrained(tmp_path, dtype="bfloat16"), g), _logits(model, g))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_presets_round_trip_through_hf_config(family):
    cfg = model_config("tiny", 97, family=family)
    assert config_from_hf(hf_config(cfg)) == cfg


def test_llama3_rope_in_the_transformers_4_format():
    """Hub checkpoints keep rope_theta at the top and the scaling in rope_scaling (v5: rope_parameters)."""
    config = json.loads((GOLDENS / "llama" / "config.json").read_text())
    rope = dict(config["rope_parameters"])
    old = {k: v for k, v in config.items() if k != "rope_parameters"}
    old.update(rope_theta=rope.pop("rope_theta"), rope_scaling=rope)
    assert config_from_hf(old) == config_from_hf(config)
    assert config_from_hf(config).rope_llama3 == (8.0, 1.0, 4.0, 64)
    assert config_from_hf(hf_config(config_from_hf(config))) == config_from_hf(config)


def _copy(family: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(GOLDENS / family, tmp_path / family))


def _edit_config(directory: Path, **fields) -> None:
    path = directory / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config.json: missing file"):
        load_pretrained(tmp_path)
    d = _copy("llama", tmp_path)
    (d / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"llama: missing file model.safetensors"):
        load_pretrained(d)
    d = _copy("qwen3", tmp_path)
    (d / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model-00002-of-00002.safetensors: missing file \(listed in"):
        load_pretrained(d)


def test_tensor_errors(tmp_path):
    d = _copy("llama", tmp_path)
    _edit_config(d, intermediate_size=100)
    with pytest.raises(ValueError, match=r"model.safetensors: tensor model.layers.0.mlp.down_proj.weight has "
                                         r"shape \(48, 96\), config.json implies \(48, 100\)"):
        load_pretrained(d)
    d = _copy("gemma", tmp_path)
    tensors = load_file(d / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, d / "model.safetensors")
    with pytest.raises(ValueError, match=r"model.safetensors: missing tensor model.layers.1.mlp.up_proj.weight"):
        load_pretrained(d)
    tensors["model.layers.0.extra.weight"] = np.zeros(3, np.float32)
    tensors["model.layers.1.mlp.up_proj.weight"] = np.zeros((128, 64), np.float32)
    save_file(tensors, d / "model.safetensors")
    with pytest.raises(ValueError, match=r"model.safetensors: unexpected tensor model.layers.0.extra.weight"):
        load_pretrained(d)


@pytest.mark.parametrize("fields, message", [
    (dict(model_type="gpt2"), r"model_type='gpt2' is not supported; supported: gemma, gemma2, llama, qwen2, qwen3"),
    (dict(attention_bias=True), r"attention_bias=True: not supported \(changes the math\)"),
    (dict(rope_parameters=dict(rope_type="yarn", factor=2.0)), r"rope_parameters=.*RoPE type 'yarn' is not supported"),
    (dict(hidden_act="gelu"), r"hidden_act='gelu': expected silu"),
    (dict(hidden_size=None), r"missing field 'hidden_size'"),
])
def test_config_errors(fields, message):
    config = {**json.loads((GOLDENS / "llama" / "config.json").read_text()), **fields}
    with pytest.raises(ValueError, match=r"^config.json: .*" + message):
        config_from_hf(config)


def test_qwen_sliding_window_is_an_error():
    config = {**json.loads((GOLDENS / "qwen2" / "config.json").read_text()), "use_sliding_window": True}
    with pytest.raises(ValueError, match=r"use_sliding_window=True: not supported"):
        config_from_hf(config)


def test_unrepresentable_config_is_an_error():
    with pytest.raises(ValueError, match=r"not a Hugging Face gemma model: final_logit_softcap"):
        hf_config(model_config("tiny", 97, family="gemma", final_logit_softcap=30.0))


@pytest.fixture(scope="module")
def hf_tok():
    return load_tokenizer(GOLDENS / "tokenizer")


def _tokenizer_cases() -> dict:
    return json.loads((GOLDENS / "tokenizer" / "cases.json").read_text())


def test_hf_tokenizer_equals_transformers(hf_tok):
    cases = _tokenizer_cases()
    assert isinstance(hf_tok, HFTokenizer)
    assert (hf_tok.bos_id, hf_tok.eos_id, hf_tok.pad_id, hf_tok.vocab_size) == (
        cases["bos_id"], cases["eos_id"], cases["pad_id"], cases["vocab_size"])
    assert hf_tok.eos_ids == tuple(cases["eos_ids"])  # from generation_config.json: several end tokens
    for case in cases["encode"]:
        assert hf_tok.encode(case["text"]) == case["ids"]
        assert hf_tok.decode(case["ids"]) == case["decoded"]
    for case in cases["chats"]:
        kw = dict(add_generation_prompt=case["add_generation_prompt"])
        assert hf_tok.apply_chat_template(case["messages"], **kw) == case["text"]
        assert hf_tok.apply_chat_template(case["messages"], tokenize=True, **kw) == case["ids"]
    with pytest.raises(jinja2.exceptions.TemplateError, match="unknown role: tool"):
        hf_tok.apply_chat_template([{"role": "tool", "content": "x"}])


def test_save_pretrained_with_tokenizer(hf_tok, loaded, tmp_path):
    save_pretrained(loaded["qwen2"], tmp_path, tokenizer=hf_tok)
    generation = json.loads((tmp_path / "generation_config.json").read_text())
    assert generation["eos_token_id"] == list(hf_tok.eos_ids)
    back = load_tokenizer(tmp_path)
    assert (back.bos_id, back.eos_ids, back.pad_id) == (hf_tok.bos_id, hf_tok.eos_ids, hf_tok.pad_id)
    chat = _tokenizer_cases()["chats"][-1]
    assert back.apply_chat_template(chat["messages"], add_generation_prompt=True) == chat["text"]


def test_load_tokenizer_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing file tokenizer.json"):
        load_tokenizer(tmp_path)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_real_configs_give_the_published_parameter_counts(name):
    count, config = PUBLISHED[name]
    cfg = config_from_hf(config)
    assert param_count(cfg) == count
    assert config_from_hf(hf_config(cfg)) == cfg


def test_save_pretrained_with_the_project_tokenizer(loaded, tmp_path):
    """Our SentencePiece tokenizer travels as tokenizer.model, its ids in the configs."""
    tok = train_tokenizer(["step 1: 3 * 4 = 12\nverdict: correct"] * 5, None, vocab_size=200)
    save_pretrained(loaded["qwen3"], tmp_path, tokenizer=tok)
    generation = json.loads((tmp_path / "generation_config.json").read_text())
    assert generation == dict(bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    back = load_tokenizer(tmp_path)
    assert back.model_proto == tok.model_proto


def test_memory_estimate_from_shapes():
    config = json.loads((GOLDENS / "qwen2" / "config.json").read_text())
    cfg = config_from_hf(config)
    e = estimate(cfg, mesh_sizes=(1, 2, 5))
    assert e.params == 4 * param_count(cfg)
    assert e.adam == 2 * e.params + 8  # two moments, and the int32 update counts of Adam and the schedule
    assert e.per_device[1] == e.params + e.adam
    assert e.per_device[1] / 2 < e.per_device[2] < 0.51 * e.per_device[1]  # all halved but norms and biases
    assert e.per_device[5] is None  # hidden_size 48 does not split over 5 devices
    assert estimate(config_from_hf(config, dtype="bfloat16"), (1,)).params == e.params // 2
    assert "| qwen2/config.json | 0.00B | bfloat16 |" in table([str(GOLDENS / "qwen2")], (1,), ("bfloat16",)).replace(
        str(GOLDENS) + "/", "")


def test_prompt_templates_are_plain_text_for_hf_tokenizers(hf_tok):
    """The markers are ordinary text to a HF tokenizer: prompts decode back to themselves and a
    target's end token is one of the tokenizer's end ids, dropped when decoding."""
    question, solution = "Use 3, 8, 4 to make 20.", "8 * 3 = 24\n24 - 4 = 20\nanswer: 20"
    critique = "step 1: correct\nstep 2: correct\nverdict: correct"
    for text in (solve_prompt(question), critique_prompt(question, solution),
                 refine_prompt(question, solution, critique)):
        assert hf_tok.decode(hf_tok.encode(text)) == text
    ids = hf_tok.encode(solution, eos=True)
    assert ids[-1] in hf_tok.eos_ids and hf_tok.decode(ids) == solution
    assert all(m in hf_tok.decode(hf_tok.encode(m)) for m in MARKERS.values())


def test_prompts_start_with_bos_where_the_tokenizer_puts_one(hf_tok, tmp_path):
    """Gemma's and Llama 3's tokenizers put bos first (their post-processor), Qwen's do not:
    prompts follow the tokenizer; targets never get one."""
    assert not hf_tok.prompt_bos and hf_tok.encode_prompt("ab") == hf_tok.encode("ab")
    d = Path(shutil.copytree(GOLDENS / "tokenizer", tmp_path / "tok"))
    data = json.loads((d / "tokenizer.json").read_text())
    bos = {"SpecialToken": {"id": "<s>", "type_id": 0}}
    a, b = {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}
    data["post_processor"] = {"type": "TemplateProcessing", "single": [bos, a], "pair": [bos, a, b],
                              "special_tokens": {"<s>": {"id": "<s>", "ids": [hf_tok.bos_id], "tokens": ["<s>"]}}}
    (d / "tokenizer.json").write_text(json.dumps(data))
    tok = load_tokenizer(d)
    assert tok.prompt_bos and tok.encode_prompt("ab") == [tok.bos_id] + hf_tok.encode("ab")
    arrays = pack_pairs(tok, ["ab"], ["cd"], 8, 8)
    assert arrays["tokens"][0, 8 - 3] == tok.bos_id  # the prompt "ab" is 2 tokens after it
    assert arrays["tokens"][0, 8:11].tolist() == tok.encode("cd", eos=True)
