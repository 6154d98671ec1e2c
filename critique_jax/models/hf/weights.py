"""Hugging Face safetensors checkpoints <-> :class:`Transformer` parameters (no torch).

Layout: HF ``nn.Linear`` weights are ``[out, in]``, our kernels ``[in, out]`` (transposed on
the way in and out); embeddings ``[V, d]`` and norm weights ``[d]`` are stored as they are
(Gemma's ``1 + w`` norms store ``w`` in both). Our ``post_attn_norm`` (the norm before the
MLP) is HF's ``post_attention_layernorm``, except with Gemma 2's sandwich norms, where it is
``pre_feedforward_layernorm`` and ``post_attention_layernorm`` is our ``attn_out_norm``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from safetensors import safe_open
from safetensors.numpy import save_file

from critique_jax.models.config import ModelConfig
from critique_jax.models.hf.config import config_from_hf, hf_config
from critique_jax.models.layer_scan import unstack_layers
from critique_jax.models.transformer import Transformer
from critique_jax.parallel.sharding import _path_str, spec_for

SINGLE, INDEX = "model.safetensors", "model.safetensors.index.json"


def hf_names(cfg: ModelConfig) -> dict[str, tuple[str, bool]]:
    """Our parameter path (``layers/0/attn/q_proj/kernel``) -> (HF tensor name, transposed?)."""
    names = {"embed/embedding": ("model.embed_tokens.weight", False),
             "final_norm/weight": ("model.norm.weight", False)}
    if not cfg.tie_embeddings:
        names["lm_head/kernel"] = ("lm_head.weight", True)
    pre_mlp = "pre_feedforward_layernorm" if cfg.sandwich_norms else "post_attention_layernorm"
    for i in range(cfg.n_layers):
        ours, hf = f"layers/{i}", f"model.layers.{i}"
        names[f"{ours}/input_norm/weight"] = (f"{hf}.input_layernorm.weight", False)
        names[f"{ours}/post_attn_norm/weight"] = (f"{hf}.{pre_mlp}.weight", False)
        if cfg.sandwich_norms:
            names[f"{ours}/attn_out_norm/weight"] = (f"{hf}.post_attention_layernorm.weight", False)
            names[f"{ours}/mlp_out_norm/weight"] = (f"{hf}.post_feedforward_layernorm.weight", False)
        for p in ("q", "k", "v", "o"):
            names[f"{ours}/attn/{p}_proj/kernel"] = (f"{hf}.self_attn.{p}_proj.weight", True)
            if cfg.qkv_bias and p != "o":
                names[f"{ours}/attn/{p}_proj/bias"] = (f"{hf}.self_attn.{p}_proj.bias", False)
        if cfg.qk_norm:
            for p in ("q", "k"):
                names[f"{ours}/attn/{p}_norm/weight"] = (f"{hf}.self_attn.{p}_norm.weight", False)
        for p in ("gate", "up", "down"):
            names[f"{ours}/mlp/{p}_proj/kernel"] = (f"{hf}.mlp.{p}_proj.weight", True)
    return names


def _ignorable(name: str, cfg: ModelConfig) -> bool:
    """Tensors some checkpoints carry that hold nothing we need: RoPE buffers, a tied lm_head."""
    return name.endswith("rotary_emb.inv_freq") or (cfg.tie_embeddings and name == "lm_head.weight")


def tensor_files(directory: Path) -> dict[str, Path]:
    """HF tensor name -> the safetensors file that holds it (single file or sharded with index)."""
    if (directory / SINGLE).exists():
        with safe_open(directory / SINGLE, framework="numpy") as f:
            return {k: directory / SINGLE for k in f.keys()}
    if not (directory / INDEX).exists():
        raise FileNotFoundError(f"{directory}: missing file {SINGLE} (or {INDEX} with its shards)")
    weight_map = json.loads((directory / INDEX).read_text())["weight_map"]
    for shard in sorted(set(weight_map.values())):
        if not (directory / shard).exists():
            raise FileNotFoundError(f"{directory / shard}: missing file (listed in {INDEX})")
    return {k: directory / v for k, v in weight_map.items()}


def load_config(directory: str | Path, *, dtype: str = "float32", param_dtype: str | None = None,
                max_seq_len: int | None = None) -> ModelConfig:
    """The ``ModelConfig`` of a HF checkpoint directory's ``config.json``.

    ``dtype``: activations; ``param_dtype``: stored parameters (default ``dtype``);
    ``max_seq_len``: the bound on positions and KV-cache slots (default the checkpoint's
    ``max_position_embeddings``).
    """
    config_path = Path(directory) / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path}: missing file")
    cfg = config_from_hf(json.loads(config_path.read_text()), dtype=dtype, source=str(config_path))
    return dataclasses.replace(cfg, param_dtype=param_dtype or dtype, max_seq_len=max_seq_len or cfg.max_seq_len)


def load_pretrained(directory: str | Path, *, dtype: str = "float32", param_dtype: str | None = None,
                    max_seq_len: int | None = None, mesh: Mesh | None = None) -> Transformer:
    """A ``Transformer`` from a HF checkpoint directory (``config.json`` + safetensors).

    ``dtype``/``param_dtype``/``max_seq_len`` as in :func:`load_config`. With a ``mesh``, each
    tensor is placed with its ``NamedSharding`` from :mod:`critique_jax.parallel.sharding` as it
    is read (one tensor on the host at a time). Errors name the file and the field or tensor.
    """
    directory = Path(directory)
    config_path = directory / "config.json"
    cfg = load_config(directory, dtype=dtype, param_dtype=param_dtype, max_seq_len=max_seq_len)
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
    names = hf_names(cfg)
    files = tensor_files(directory)
    index_name = directory / (SINGLE if (directory / SINGLE).exists() else INDEX)
    known = {n for n, _ in names.values()}
    for name, file in files.items():
        if name not in known and not _ignorable(name, cfg):
            raise ValueError(f"{file}: unexpected tensor {name} for this {config_path}")
    with contextlib.ExitStack() as stack:
        handles = {f: stack.enter_context(safe_open(f, framework="numpy")) for f in sorted(set(files.values()))}
        placement = {}  # checked for every tensor before any is read
        for path, leaf in jax.tree_util.tree_leaves_with_path(abstract):
            p = _path_str(path)
            name, transposed = names[p]
            if name not in files:
                raise ValueError(f"{index_name}: missing tensor {name}")
            want = tuple(leaf.shape[::-1] if transposed else leaf.shape)
            shape = tuple(handles[files[name]].get_slice(name).get_shape())
            if shape != want:
                raise ValueError(f"{files[name]}: tensor {name} has shape {shape}, {config_path.name} implies {want}")
            placement[p] = None if mesh is None else NamedSharding(mesh, spec_for(p, tuple(leaf.shape), mesh))

        def read(path, leaf):
            p = _path_str(path)
            name, transposed = names[p]
            arr = handles[files[name]].get_tensor(name)
            arr = np.ascontiguousarray(arr.T if transposed else arr).astype(cfg.jnp_param_dtype)
            return jnp.asarray(arr) if mesh is None else jax.device_put(arr, placement[p])

        state = jax.tree_util.tree_map_with_path(read, abstract)
    return nnx.merge(graphdef, state)


def save_pretrained(model: Transformer, directory: str | Path, tokenizer: Any = None) -> None:
    """Writes ``model`` as a HF checkpoint: config.json, generation_config.json, model.safetensors
    (HF names and layouts, in the parameter dtype) and, if given, the tokenizer's files.

    ``tokenizer``: anything with ``bos_id``/``eos_id``/``pad_id`` (and optionally ``eos_ids``,
    several end tokens) whose ids go into the configs, and ``save_pretrained(directory)``
    (:class:`~critique_jax.text.HFTokenizer`) or ``save(path)`` (the project's SentencePiece
    tokenizer, written as ``tokenizer.model``).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg
    ids = {}
    if tokenizer is not None:
        eos = list(getattr(tokenizer, "eos_ids", [tokenizer.eos_id]))
        ids = dict(bos_token_id=tokenizer.bos_id, eos_token_id=eos[0] if len(eos) == 1 else eos,
                   pad_token_id=tokenizer.pad_id)
        ids = {k: v for k, v in ids.items() if v is not None}
    config = hf_config(cfg, **ids)
    names = hf_names(cfg)
    tensors = {}
    params = nnx.state(model, nnx.Param).to_pure_dict()
    if cfg.scan_layers:
        params = unstack_layers(params)
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        name, transposed = names[_path_str(path)]
        arr = np.asarray(jax.device_get(leaf))
        tensors[name] = np.ascontiguousarray(arr.T if transposed else arr)
    save_file(tensors, directory / SINGLE, metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (directory / "generation_config.json").write_text(json.dumps(ids, indent=2) + "\n")
    if tokenizer is not None:
        if hasattr(tokenizer, "save_pretrained"):
            tokenizer.save_pretrained(directory)
        else:
            tokenizer.save(directory / "tokenizer.model")
