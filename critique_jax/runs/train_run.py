"""The train program: SFT warm-up (unless done or ``init_from``), then RL, in one run directory.

Phases share one global step counter: SFT steps ``1..S``, RL steps ``S+1..S+R``. The final
SFT policy is also saved apart (``<workdir>/sft_policy``): it is the frozen reference policy
of the KL term and can initialise other runs (``init_from``), so a sweep shares one warm-up.
"""

from __future__ import annotations

import ml_collections

from critique_jax.critique.sources import critique_source
from critique_jax.metrics import Progress
from critique_jax.parallel.distributed import is_main_process
from critique_jax.rundir import save_config
from critique_jax.runs import roles
from critique_jax.runs.evaluate import evaluate
from critique_jax.runs.layout import CHECKPOINTS, SFT_POLICY, RunDir, final_checkpointer
from critique_jax.runs.rl_loop import run_rl
from critique_jax.runs.run import Run, setup
from critique_jax.runs.supervised import run_sft


def train(config: ml_collections.ConfigDict, workdir: str, resume: bool = True, stop_at: int | None = None) -> str:
    """Runs SFT (unless done or ``init_from``) and RL in ``workdir``; returns the workdir.

    ``stop_at``: end the run after RL step ``stop_at`` (global numbering) with a checkpoint,
    as a preemption would; running again resumes exactly where it stopped.
    """
    policy_dir = roles.check_policy_run(config, config.init_from, "init_from") if config.init_from else None
    run = setup(config, workdir)
    with run.active():
        return _train(run, policy_dir, resume, stop_at)


def _train(run: Run, policy_dir: str | None, resume: bool, stop_at: int | None) -> str:
    config, workdir = run.config, run.workdir
    c, rd = config, RunDir(workdir)
    rd.refuse_overwrite(resume, CHECKPOINTS, SFT_POLICY)
    save_config(config, workdir, resume, write=is_main_process())
    ckpt = rd.training(c.checkpoint, best=True)
    sft_ckpt = final_checkpointer(policy_dir) if policy_dir else rd.final(SFT_POLICY)
    total = (0 if c.init_from else c.sft.steps) + c.rl.steps
    latest = ckpt.latest_step()
    # Logs past the step we resume from (or all logs, when nothing was saved) belong to a
    # crashed attempt and are dropped, so the resumed run's logs equal an uninterrupted run's.
    # A saved sft_policy is the step after SFT and its evaluation, even when the latest
    # checkpoint is an older SFT one (killed before the first RL checkpoint).
    sft_done = c.sft.steps if sft_ckpt.latest_step() is not None and not c.init_from else -1
    done = max(latest if latest is not None else -1, sft_done)
    run.writer = rd.writer(c, done)
    progress = Progress(total=total, initial=latest or 0, enabled=c.log.progress,
                        keys=("sft/nll", "train/reward", "train/entropy", "eval/pass@1"))
    source = critique_source(c, run.task, roles.load_critic(run) if c.critique.type == "model" else None)
    if sft_ckpt.latest_step() is not None:
        sft_params = sft_ckpt.restore(like={"params": run.abstract_params()})[0]["params"]
    elif c.init_from:
        raise FileNotFoundError(f"init_from={c.init_from!r}: no SFT policy checkpoint in "
                                f"{roles.init_from_dir(c.init_from)}")
    else:
        sft_params = run_sft(run, ckpt, progress)
        run.writer.write(c.sft.steps, evaluate(run, sft_params, c.sft.steps, source))
        sft_ckpt.save(c.sft.steps, {"params": sft_params}, {"phase": "sft_final"}, force=True)
        sft_ckpt.wait()
    if c.rl.steps:
        run_rl(run, ckpt, sft_params, source, progress, stop_at)
    for closer in (ckpt.close, sft_ckpt.close, progress.close, run.writer.close):
        closer()
    return workdir
