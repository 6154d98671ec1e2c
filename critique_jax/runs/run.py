"""The run: what every program (train, train_critic, self_train, analysis) sets up before it
trains or samples: the validated config, the run directory, the mesh, the task's data, the
tokenizer and the policy's model definition. Pure set-up; the loops live beside it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from typing import Any, Iterator

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from critique_jax import storage, validation
from critique_jax.data import TaskSource, build_task_dataset
from critique_jax.metrics import MetricsWriter
from critique_jax.models import ModelConfig
from critique_jax.parallel.distributed import is_main_process, shard_batch
from critique_jax.parallel.mesh import make_mesh
from critique_jax.rl import policy_init
from critique_jax.runlock import lock_run_dir
from critique_jax.runs import roles
from critique_jax.runs.layout import RunDir
from critique_jax.sampling import SamplerConfig, SamplingSettings
from critique_jax.tasks import Task, get_task
from critique_jax.text import Tokenizer, default_cache_dir
from critique_jax.text.prompt_format import PromptFormat, prompt_format

log = logging.getLogger("critique_jax")


@dataclasses.dataclass
class Run:
    """Everything a run holds that is not the train state.

    prompts: how prompts are written (:mod:`critique_jax.text.prompt_format`); sampling: the
    ``sampling`` section, typed (what the layers below read instead of the config);
    model_cfg / graphdef / param_sh: the model this run trains or samples (the policy's; a
    critic run replaces them with the critic's, :func:`critique_jax.runs.critic_run.setup_critic`);
    sampler: its sampling settings; writer: set by the program once the resume step is known.
    """

    config: ml_collections.ConfigDict
    workdir: str
    mesh: Mesh
    task: Task
    tok: Tokenizer
    prompts: PromptFormat
    sampling: SamplingSettings
    train: TaskSource
    test: TaskSource
    model_cfg: ModelConfig
    graphdef: nnx.GraphDef
    param_sh: Any
    sampler: SamplerConfig
    writer: MetricsWriter | None = None

    @property
    def dir(self) -> RunDir:
        return RunDir(self.workdir)

    @contextlib.contextmanager
    def active(self) -> Iterator[Run]:
        """The run's mesh set (the model's activation constraints read it) and, on leaving, also
        by an exception, its writer closed (a cloud run directory's last logs uploaded)."""
        with jax.set_mesh(self.mesh):
            try:
                yield self
            finally:
                if self.writer is not None:
                    self.writer.close()

    def shard(self, x: np.ndarray | jax.Array) -> jax.Array:
        """A global batch-sharded array from a full host array (or an array of PRNG keys)."""
        return shard_batch(x, self.mesh)

    @property
    def prompt_width(self) -> int:
        return max(self.config.sampling.prompt_buckets)

    def abstract_params(self) -> Any:
        """Shape/dtype/sharding structs of the model's parameters (restore targets)."""
        return roles.abstract_params(self.model_cfg, self.param_sh)


def setup(config: ml_collections.ConfigDict, workdir: str, program: str = "train") -> Run:
    """Validates the config for ``program`` (:data:`critique_jax.validation.PROGRAMS`), locks the run
    directory, builds data, tokenizer, mesh and the policy's model definition (the program then
    checks and writes config.json, :func:`rundir.save_config`)."""
    validation.validate(config, jax.device_count(), program)
    if config.critique.type == "model":
        roles.check_critic_source(config)
    storage.path(workdir).mkdir(parents=True, exist_ok=True)
    if is_main_process():
        lock_run_dir(workdir)
    mesh = make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    log.info("mesh data x fsdp x tensor = %s over %d %s devices in %d process(es)",
             " x ".join(str(n) for n in mesh.shape.values()), mesh.size, jax.default_backend(), jax.process_count())
    task = get_task(config.task.name)
    data_dir = config.data_dir or os.path.join(default_cache_dir(), "data")

    def data_and_tokenizer():
        splits = build_task_dataset(config.task.name, data_dir, seed=config.task.data_seed,
                                    n_train=config.task.n_train, n_test=config.task.n_test,
                                    difficulties=list(config.task.difficulties), n_solutions=config.task.n_solutions,
                                    train_files=tuple(config.task.train_files), test_files=tuple(config.task.test_files))
        tok = policy_init.policy_tokenizer(config)
        return splits, tok

    if jax.process_count() > 1:  # process 0 builds the dataset and tokenizer; the others then load them
        if is_main_process():
            data_and_tokenizer()
        multihost_utils.sync_global_devices("critique_jax: data and tokenizer ready")
    splits, tok = data_and_tokenizer()
    prompts = prompt_format(config.prompt.format, tok, config.prompt.instruction or task.instructions,
                            config.prompt.system)
    check_lengths(splits["train"], tok, prompts, config)
    max_seq_len = max(prompt_buckets(config)) + config.sampling.max_new_tokens
    validation.warn_sequence_length(config, max_seq_len)
    model_cfg = policy_init.policy_model_config(config, tok, max_seq_len)
    model_cfg, graphdef, param_sh = roles.define(model_cfg, mesh)
    if config.mesh.reference != "train":  # a layout the mesh cannot take fails here, not after SFT
        roles.define(model_cfg, mesh, config.mesh.reference)
    sampler = SamplerConfig(max_new_tokens=config.sampling.max_new_tokens, eos_ids=tok.eos_ids, pad_id=tok.pad_id,
                            decode_phases=config.sampling.decode_phases)
    return Run(config=config, workdir=workdir, mesh=mesh, task=task, tok=tok, prompts=prompts,
               sampling=SamplingSettings.from_section(config.sampling), train=splits["train"],
               test=splits["test"], model_cfg=model_cfg, graphdef=graphdef, param_sh=param_sh, sampler=sampler)


def rl_pool(run: Run) -> TaskSource:
    """The RL prompts: the first ``rl.pool_size`` train problems (a fixed pool, revisited), or all."""
    return run.train.head(run.config.rl.pool_size) if run.config.rl.pool_size else run.train


def prompt_buckets(config: ml_collections.ConfigDict) -> tuple[int, ...]:
    """Every prompt bucket the run samples with (solve, and critique/refine when critiquing)."""
    buckets = tuple(config.sampling.prompt_buckets)
    if config.critique.type != "none" or config.critique.sft_refine_every:
        buckets += tuple(config.critique.prompt_buckets) + tuple(config.critique.refine_buckets)
    return buckets


def check_lengths(source: TaskSource, tok: Tokenizer, prompt_fmt: PromptFormat,
                  config: ml_collections.ConfigDict) -> None:
    """Fails before training when prompts or reference solutions do not fit the configured widths."""
    prompts = max(len(tok.encode_prompt(prompt_fmt.solve(source[i].problem.question))) for i in range(len(source)))
    solutions = max(len(tok.encode(s, eos=True)) for i in range(len(source)) for s in source[i].solutions)
    if prompts > max(config.sampling.prompt_buckets):
        raise ValueError(f"the longest {config.task.name} prompt has {prompts} tokens: raise the largest "
                         f"sampling.prompt_buckets entry (now {max(config.sampling.prompt_buckets)})")
    if solutions > config.sampling.max_new_tokens:
        raise ValueError(f"the longest {config.task.name} reference solution has {solutions} tokens (with the end "
                         f"token): raise sampling.max_new_tokens (now {config.sampling.max_new_tokens})")
