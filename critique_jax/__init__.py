"""critique_jax: entropy control and critique-in-the-loop RL for reasoning LMs in JAX/Flax."""

__version__ = "0.1.0"
