"""Token-level ops: log-probs, entropies, masks, covariance (pure JAX)."""

from critique_jax.ops.token_stats import chunked_logprobs_and_entropy as chunked_logprobs_and_entropy
from critique_jax.ops.token_stats import entropy_from_logits as entropy_from_logits
from critique_jax.ops.token_stats import logprobs_and_entropy as logprobs_and_entropy
from critique_jax.ops.token_stats import scale_logits as scale_logits
