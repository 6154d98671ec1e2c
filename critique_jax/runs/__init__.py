"""The runtime layer: runs, their directories, model roles, the loops and the programs.

Above ``rl/``, ``critique/`` and ``analysis/`` (which never import it); below the entry points
(``critique_jax.train``, ``train_critic``, ``self_train``, ``sweep``). ARCHITECTURE.md draws the
layers and one RL step.
"""

from critique_jax.runs.critic_run import train_critic
from critique_jax.runs.policies import load_policy
from critique_jax.runs.run import Run, setup
from critique_jax.runs.self_train_run import self_train
from critique_jax.runs.train_run import train

__all__ = ["Run", "load_policy", "self_train", "setup", "train", "train_critic"]
