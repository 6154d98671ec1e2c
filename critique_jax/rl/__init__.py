"""RL objectives: advantages, the policy-loss registry, composable terms, the loss entry point."""

from critique_jax.rl.advantages import ESTIMATORS as ESTIMATORS
from critique_jax.rl.advantages import compute_advantages as compute_advantages
from critique_jax.rl.advantages import drgrpo_advantages as drgrpo_advantages
from critique_jax.rl.advantages import grpo_advantages as grpo_advantages
from critique_jax.rl.advantages import rloo_advantages as rloo_advantages
from critique_jax.rl.aggregation import aggregate as aggregate
from critique_jax.rl.config import ClipCovConfig as ClipCovConfig
from critique_jax.rl.config import CritiqueGRPOConfig as CritiqueGRPOConfig
from critique_jax.rl.config import GPPOConfig as GPPOConfig
from critique_jax.rl.config import KLCovConfig as KLCovConfig
from critique_jax.rl.config import LossConfig as LossConfig
from critique_jax.rl.config import PPOConfig as PPOConfig
from critique_jax.rl.inputs import LossInputs as LossInputs
from critique_jax.rl.losses import TokenContext as TokenContext
from critique_jax.rl.losses import get_loss as get_loss
from critique_jax.rl.losses import make_loss_config as make_loss_config
from critique_jax.rl.losses import register_loss as register_loss
from critique_jax.rl.losses import registered_losses as registered_losses
from critique_jax.rl.losses import token_separable as token_separable
from critique_jax.rl.objective import TokenTerms as TokenTerms
from critique_jax.rl.objective import compute_loss as compute_loss
from critique_jax.rl.objective import policy_token_terms as policy_token_terms
from critique_jax.rl.terms import forking_mask as forking_mask
from critique_jax.rl.terms import reference_kl as reference_kl
