"""Token-level ops: log-probs, entropies, masks, covariance (pure JAX)."""

from critique_jax.ops.token_stats import chunked_logprobs_and_entropy as chunked_logprobs_and_entropy
from critique_jax.ops.token_stats import entropy_from_logits as entropy_from_logits
from critique_jax.ops.token_stats import logprobs_and_entropy as logprobs_and_entropy
from critique_jax.ops.token_stats import scale_logits as scale_logits
from critique_jax.ops.masked import floor_fraction as floor_fraction
from critique_jax.ops.masked import kth_largest as kth_largest
from critique_jax.ops.masked import masked_count as masked_count
from critique_jax.ops.masked import masked_mean as masked_mean
from critique_jax.ops.masked import masked_order_statistics as masked_order_statistics
from critique_jax.ops.masked import masked_quantiles as masked_quantiles
from critique_jax.ops.masked import masked_sum as masked_sum
from critique_jax.ops.masked import token_covariance as token_covariance
from critique_jax.ops.masked import top_k_mask as top_k_mask
from critique_jax.ops.masked import top_quantile_count as top_quantile_count
