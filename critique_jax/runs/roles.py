"""Model roles: the policy, the frozen reference policy and the critique model, each defined on
the run's mesh by one factory (:func:`define`), and the checks and loaders of the run
directories they come from.

* the policy: ``model.preset``/``model.family`` (or ``model.hf_dir``), defined in
  :func:`critique_jax.runs.run.setup`; loaded from another train run's ``sft_policy/``
  (``init_from``, ``critic.policy_from``) after :func:`check_policy_run`;
* the reference policy: the SFT policy's parameters (same definition), in the ``mesh.reference``
  layout (:data:`critique_jax.parallel.sharding.LAYOUTS`; the policy trains in ``train``);
* the critic: defined once, :func:`critic_model_config`, from the ``critic`` section when it is
  trained and from its ``critic_policy/`` metadata (architecture, dtypes, widths) when it is loaded
  (:func:`load_critic`), in the ``mesh.critic`` layout when it critiques an RL run's samples.
"""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any

import jax
import ml_collections
from flax import nnx
from jax.sharding import Mesh

from critique_jax import config as config_lib, storage
from critique_jax.models import ModelConfig, Transformer, model_config
from critique_jax.parallel.sharding import check_heads, param_shardings
from critique_jax.runs.layout import CONFIG, CRITIC_POLICY, SFT_POLICY, RunDir, final_checkpointer
from critique_jax.runs.state import copy_tree
from critique_jax.critique.sources import CritiqueModel

if TYPE_CHECKING:
    from critique_jax.runs.run import Run

#: Fields a policy run (``init_from``, ``critic.policy_from``) must share with the config that loads
#: its policy: the policy's shapes, parameter layout (``model.scan_layers``: stacked layers) and vocabulary.
POLICY_MATCHING_KEYS = ("task.name", "model.preset", "model.family", "model.overrides", "model.hf_dir",
                        "model.scan_layers", "tokenizer.vocab_size", "tokenizer.seed")


def define(cfg: ModelConfig, mesh: Mesh, layout: str = "train") -> tuple[ModelConfig, nnx.GraphDef, Any]:
    """``cfg`` as it runs on ``mesh`` (projections fused, ``ModelConfig.fuse_projections``, unless the
    mesh's tensor axis shards them), its model definition and parameter shardings in ``layout``
    (nothing allocated)."""
    check_heads(cfg.n_heads, cfg.n_kv_heads, mesh)
    cfg = dataclasses.replace(cfg, fuse_projections=mesh.shape["tensor"] == 1)
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
    return cfg, graphdef, param_shardings(abstract, mesh, layout)


def abstract_params(cfg: ModelConfig, param_sh: Any) -> Any:
    """Shape/dtype/sharding structs of the parameters of ``cfg`` (restore targets)."""
    abstract = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))[1]
    return jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), abstract, param_sh)


def init_params(run: Run, seed: int) -> nnx.State:
    """Freshly initialised parameters of the run's model, created directly in their shardings."""
    cfg = run.model_cfg
    return jax.jit(lambda: nnx.split(Transformer(cfg, rngs=nnx.Rngs(seed)))[1], out_shardings=run.param_sh)()


# ----------------------------------------------------------------------------- the policy


def init_from_dir(path: str) -> str:
    """The ``sft_policy/`` folder of the train run ``path``."""
    return RunDir(path) / SFT_POLICY


def check_policy_run(config: ml_collections.ConfigDict, path: str, key: str) -> str:
    """The ``sft_policy`` directory of the train run ``path`` (the value of config ``key``), after
    checking that the run's :data:`POLICY_MATCHING_KEYS` equal this config's; errors name ``key``,
    and every differing field with both values."""
    cfg_file, policy_dir = RunDir(path).config_file, init_from_dir(path)
    for f in (cfg_file, policy_dir):
        if not storage.path(f, key).exists():
            raise FileNotFoundError(f"{key}={path!r}: {f} is missing; expected a train run directory "
                                    "(python -m critique_jax.train) with its config.json and sft_policy/")
    theirs = RunDir(path).read_config()
    differ = []
    for field_key in POLICY_MATCHING_KEYS:
        section, field = field_key.split(".")
        # As JSON values (model.overrides is a dict); a run from before a key existed had its default.
        mine = json.loads(json.dumps(config[section][field], default=dict))
        other = theirs.get(section, {}).get(field, json.loads(config_lib.default_config().to_json())[section][field])
        if mine != other:
            differ.append(f"{field_key}={mine!r} differs from the {key} run's {field_key}={other!r}")
    if differ:
        raise ValueError(f"config {'; '.join(differ)} ({cfg_file})")
    return policy_dir


def restore_policy(run: Run, policy_dir: str) -> nnx.State:
    """The ``{"params"}`` checkpoint of ``policy_dir`` (an ``sft_policy/``) in the run's shardings."""
    with final_checkpointer(policy_dir) as ckpt:
        return ckpt.restore(like={"params": run.abstract_params()})[0]["params"]


def reference_params(run: Run, sft_params: nnx.State) -> nnx.State:
    """The frozen reference policy: a copy of ``sft_params`` (its own buffers, also in the ``train``
    layout: the update donates the train state's) in the ``mesh.reference`` layout."""
    return jax.device_put(copy_tree(sft_params), param_shardings(run.abstract_params(), run.mesh,
                                                                 run.config.mesh.reference))


# ----------------------------------------------------------------------------- the critic


def critic_model_config(critic: ml_collections.ConfigDict, model: ml_collections.ConfigDict, vocab_size: int,
                        max_seq_len: int) -> ModelConfig:
    """The critic's architecture: ``critic.preset``/``critic.family`` with the dtypes of the
    ``model`` section (the policy's), ``max_seq_len`` positions. ``critic`` and ``model`` are the
    config sections, or the saved metadata of a trained critic (same keys)."""
    return model_config(critic["preset"], vocab_size, family=critic["family"], dtype=model["dtype"],
                        param_dtype=model["param_dtype"], max_seq_len=max_seq_len)


def critic_meta(config: ml_collections.ConfigDict, vocab_size: int, prompt_width: int, response_len: int) -> dict:
    """What ``critic_policy/`` saves beside the parameters, everything :func:`load_critic` needs
    to define the critic again."""
    return {"phase": "critic_final", "preset": config.critic.preset, "family": config.critic.family,
            "dtype": config.model.dtype, "param_dtype": config.model.param_dtype, "vocab_size": vocab_size,
            "prompt_width": prompt_width, "response_len": response_len}


def check_critic_source(config: ml_collections.ConfigDict) -> None:
    """Fails before anything trains when ``critique.critic_from`` is not a critic for this run:
    no train_critic run there, or one trained on another task or tokenizer (a vocabulary that
    does not match the policy's, whose critique tokens would decode to other text)."""
    src = config.critique.critic_from
    what = "critique.critic_from"
    run_dir = RunDir(src)
    if not (storage.path(run_dir.config_file, what).is_file() and storage.path(run_dir / CRITIC_POLICY).is_dir()):
        raise FileNotFoundError(f"{what}={src!r}: expected a train_critic run directory with "
                                f"{CONFIG} and {CRITIC_POLICY}/")
    theirs = run_dir.read_config()
    for key, ours in (("task.name", config.task.name), ("tokenizer.vocab_size", config.tokenizer.vocab_size),
                      ("tokenizer.seed", config.tokenizer.seed)):
        section, field = key.split(".")
        if theirs[section][field] != ours:
            raise ValueError(f"critique.critic_from={src!r}: the critic was trained with {key}="
                             f"{theirs[section][field]!r} but this run has {key}={ours!r}; its vocabulary does not "
                             "match the policy's tokenizer (train a critic with the same task and tokenizer)")


def load_critic(run: Run) -> CritiqueModel:
    """The frozen critique model of ``critique.critic_from`` (a train_critic run), on this mesh,
    defined from its ``critic_policy/`` metadata (critics saved before the metadata held dtypes:
    the dtypes of that run's ``config.json``, which it was trained with)."""
    src = RunDir(run.config.critique.critic_from)
    with final_checkpointer(src / CRITIC_POLICY) as ckpt:
        meta = ckpt.read_meta()
        if "dtype" not in meta:
            meta |= {k: src.read_config()["model"][k] for k in ("dtype", "param_dtype")}
        # Critique prompts are at most the largest critique bucket; critiques at most the longest target.
        max_seq_len = max(run.config.critique.prompt_buckets) + int(meta["response_len"])
        cfg = critic_model_config(meta, meta, run.tok.vocab_size, max_seq_len)
        cfg, graphdef, param_sh = define(cfg, run.mesh, run.config.mesh.critic)
        params = ckpt.restore(like={"params": abstract_params(cfg, param_sh)})[0]["params"]
    return CritiqueModel((graphdef, params), dataclasses.replace(run.sampler, max_new_tokens=int(meta["response_len"])))
