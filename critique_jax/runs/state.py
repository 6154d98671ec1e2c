"""Train states on the mesh: their shardings, initialisation, the jitted supervised step, and
the small device helpers the loops share."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from critique_jax.parallel.mesh import replicated
from critique_jax.parallel.sharding import tree_shardings_like
from critique_jax.rl.train_step import TrainState, _all_finite, sft_update

if TYPE_CHECKING:
    from critique_jax.runs.run import Run


def state_shardings(run: Run, params: nnx.State, optimizer: optax.GradientTransformation) -> TrainState:
    """Where each part of the train state lives (optimiser moments follow their parameters)."""
    abstract_opt = jax.eval_shape(optimizer.init, params)
    opt_sh = tree_shardings_like(abstract_opt, params, run.param_sh, run.mesh)
    return TrainState(params=run.param_sh, opt_state=opt_sh, step=replicated(run.mesh))


def init_state(run: Run, params: nnx.State, optimizer: optax.GradientTransformation) -> TrainState:
    """A fresh optimiser state for ``params``, in the state's shardings."""
    sh = state_shardings(run, params, optimizer)
    opt_state = jax.jit(optimizer.init, out_shardings=sh.opt_state)(params)
    return TrainState(params=params, opt_state=opt_state, step=jax.device_put(jnp.zeros((), jnp.int32), sh.step))


def restored_state(restored: dict) -> TrainState:
    """The :class:`TrainState` of a restored training checkpoint (:func:`checkpoint_state`)."""
    return TrainState(restored["params"], restored["opt_state"], restored["step"])


def checkpoint_state(state: TrainState, **extra: Any) -> dict:
    """A training checkpoint's state: params, optimiser state, step, and ``extra`` items (typed
    PRNG keys as their key data; None items left out)."""
    out = {"params": state.params, "opt_state": state.opt_state, "step": state.step}
    for k, v in extra.items():
        if v is not None:
            out[k] = jax.random.key_data(v) if k == "key" else v
    return out


def sft_step_fn(run: Run, params: nnx.State, optimizer: optax.GradientTransformation, schedule=None):
    """The jitted supervised step ``(state, batch) -> (state, metrics)``: donates the state and
    keeps it in its shardings (policy SFT, critic training and self-training all use it).
    ``schedule``: the optimiser's learning-rate schedule, logged as the metric ``lr``."""
    return jax.jit(functools.partial(sft_update, run.graphdef, optimizer, lr_schedule=schedule), donate_argnums=0,
                   out_shardings=(state_shardings(run, params, optimizer), None))


all_finite = jax.jit(_all_finite)

copy_tree = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))


def replicated_key(run: Run, seed: int) -> jax.Array:
    """A PRNG key replicated over the mesh (device_put cannot place key arrays across processes)."""
    return jax.jit(lambda: jax.random.key(seed), out_shardings=replicated(run.mesh))()


def scalars(metrics: dict, prefix: str) -> dict[str, float]:
    """Device metrics as host floats named ``<prefix>/<name>``."""
    return {f"{prefix}/{k}": float(v) for k, v in jax.device_get(metrics).items()}
