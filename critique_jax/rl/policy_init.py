"""The policy's tokenizer, architecture and initial parameters.

Two sources, chosen by ``model.hf_dir``:

* empty (default): the task's SentencePiece tokenizer (``tokenizer.*``), the architecture
  ``model.preset`` x ``model.family`` with ``model.overrides`` applied, random parameters
  (``seed``), then SFT;
* a Hugging Face checkpoint directory: its ``config.json`` (the architecture; ``model.dtype``/
  ``param_dtype`` still apply), its tokenizer (``tokenizer.json``, or the project's
  ``tokenizer.model``) and its safetensors weights, placed in the run's parameter shardings.
  The loaded policy is the initial policy of SFT (``sft.steps > 0`` fine-tunes it) or, with
  ``sft.steps = 0``, of RL and the frozen reference policy of the KL term.

Settings that would contradict a checkpoint (``model.overrides``) or need the project tokenizer
(``critique.type='model'``: the critique model is trained with it) are config errors.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import jax
import ml_collections
from flax import nnx

from critique_jax.models import ModelConfig, Transformer, model_config
from critique_jax.models.hf import load_config, load_pretrained
from critique_jax.models.hf.weights import tensor_files
from critique_jax.models.layer_scan import stack_layers
from critique_jax.text import HFTokenizer, Tokenizer, load_tokenizer, tokenizer_for_task


def model_overrides(c: ml_collections.ConfigDict) -> dict[str, Any]:
    """The ``model.overrides`` fields that are set (not None)."""
    return {k: v for k, v in c.model.overrides.items() if v is not None}


def check_config(c: ml_collections.ConfigDict) -> None:
    """Settings that conflict with ``model.hf_dir``; errors name the keys."""
    if not c.model.hf_dir:
        return
    if model_overrides(c):
        raise ValueError(f"config model.overrides {model_overrides(c)} with model.hf_dir={c.model.hf_dir!r}: the "
                         "architecture is the checkpoint's config.json; unset the overrides")
    if c.critique.type == "model":
        raise ValueError(f"config critique.type='model' with model.hf_dir={c.model.hf_dir!r}: a critique model is "
                         "trained with the project tokenizer, not the checkpoint's; use a rule critique type")


def _checkpoint(c: ml_collections.ConfigDict) -> tuple[Path, ModelConfig]:
    """``model.hf_dir`` and its config, after checking that the directory holds config.json and
    weights (errors name the file)."""
    directory = Path(c.model.hf_dir)
    if not directory.is_dir():
        raise FileNotFoundError(f"config model.hf_dir={c.model.hf_dir!r}: no such directory")
    cfg = load_config(directory)
    tensor_files(directory)
    return directory, cfg


def policy_tokenizer(c: ml_collections.ConfigDict) -> Tokenizer | HFTokenizer:
    """The task's SentencePiece tokenizer, or the checkpoint's, checked against its config.json:
    a tokenizer with more ids than the model's ``vocab_size`` does not belong to it."""
    if not c.model.hf_dir:
        return tokenizer_for_task(c.task.name, vocab_size=c.tokenizer.vocab_size, seed=c.tokenizer.seed,
                                  train_files=tuple(c.task.train_files))
    directory, cfg = _checkpoint(c)
    tok = load_tokenizer(directory)
    vocab = cfg.vocab_size
    if tok.vocab_size > vocab:
        name = "tokenizer.json" if isinstance(tok, HFTokenizer) else "tokenizer.model"
        raise ValueError(f"{directory / name} has {tok.vocab_size} tokens but {directory / 'config.json'} has "
                         f"vocab_size={vocab}: the tokenizer does not belong to this model")
    return tok


def policy_model_config(c: ml_collections.ConfigDict, tok: Tokenizer | HFTokenizer, max_seq_len: int) -> ModelConfig:
    """The policy's architecture with ``max_seq_len`` positions (prompt bucket + new tokens) and
    the run's computation settings (``model.dtype``, ``param_dtype``, ``remat``, ``attention``,
    ``scan_layers``)."""
    if not c.model.hf_dir:
        return model_config(c.model.preset, tok.vocab_size, family=c.model.family, dtype=c.model.dtype,
                            param_dtype=c.model.param_dtype, max_seq_len=max_seq_len, remat=c.model.remat,
                            attention=c.model.attention, scan_layers=c.model.scan_layers, **model_overrides(c))
    cfg = load_config(c.model.hf_dir, dtype=c.model.dtype, param_dtype=c.model.param_dtype)
    if max_seq_len > cfg.max_seq_len:
        raise ValueError(f"{os.path.join(c.model.hf_dir, 'config.json')}: max_position_embeddings={cfg.max_seq_len} "
                         f"is below the run's {max_seq_len} positions (largest prompt bucket + "
                         "sampling.max_new_tokens)")
    return dataclasses.replace(cfg, max_seq_len=max_seq_len, remat=c.model.remat, attention=c.model.attention,
                               scan_layers=c.model.scan_layers)


def pretrained_params(hf_dir: str, cfg: ModelConfig, mesh: jax.sharding.Mesh, shardings: Any) -> nnx.State:
    """The checkpoint's parameters for the architecture ``cfg`` (from :func:`policy_model_config`),
    read tensor by tensor into ``shardings`` (the run's parameter shardings) on ``mesh``; with
    ``cfg.scan_layers``, stacked per kind after reading (a second copy of the layers meanwhile)."""
    model = load_pretrained(hf_dir, dtype=cfg.dtype, param_dtype=cfg.param_dtype, max_seq_len=cfg.max_seq_len,
                            mesh=mesh)
    params = nnx.split(model)[1]
    if cfg.scan_layers:
        stacked = stack_layers(params.to_pure_dict())
        del model, params
        params = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))[1]
        nnx.replace_by_pure_dict(params, stacked)
    return jax.device_put(params, shardings)
