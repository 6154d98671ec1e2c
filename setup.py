"""critique_jax: entropy control and critique-in-the-loop RL for reasoning LMs in JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name="critique_jax",
    version="0.1.0",
    description=(
        "Pure-functional JAX/Flax NNX codebase for studying how critique models keep a "
        "reasoning policy's entropy from collapsing under RL (GRPO, Clip-Cov, KL-Cov, "
        "GPPO, forking-token masks, Critique-GRPO)."
    ),
    packages=find_packages(include=["critique_jax", "critique_jax.*"]),
    python_requires=">=3.11",
    # Minimums are the versions the test suite was run with (2026-11); older ones may work.
    install_requires=[
        "jax>=0.10.0",
        "flax>=0.12.0",
        "optax>=0.2.6",
        "orbax-checkpoint>=0.11.0",
        "etils[epath]>=1.7",  # run-directory paths, local or cloud (critique_jax.storage)
        "tensorflow-datasets>=4.9.9",  # used without TensorFlow: array_record + data_source
        "array-record>=0.8.0",
        "sentencepiece>=0.2.0",
        "safetensors>=0.4.3",  # Hugging Face checkpoints (numpy API; bfloat16 via ml_dtypes)
        "tokenizers>=0.20",  # Hugging Face tokenizer.json
        "jinja2>=3.1.6",  # chat templates (sandboxed, as transformers requires)
        "ml-collections>=1.1.0",
        "absl-py>=2.1.0",
        "numpy>=1.26",
        "tqdm>=4.66",
        "matplotlib>=3.9",
        "tensorboardX>=2.6.2",  # TensorBoard event writer with no TensorFlow dependency
    ],
    extras_require={
        # gcp-storage-emulator: a local GCS server the cloud run-directory test writes gs:// to.
        "test": ["pytest>=8.0", "pytest-timeout>=2.3", "pytest-xdist>=3.8", "gcp-storage-emulator>=2024.8"],
        "notebooks": ["nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6.29"],
        # GSM8K / MATH from local files: Parquet (pyarrow, also pulled in by tensorflow-datasets)
        # and MATH answer equivalence (math-verify: sympy + latex2sympy2_extended).
        "data": ["pyarrow>=14", "math-verify>=0.9.0"],
        # gs:// run directories (etils.epath's fsspec backend; orbax writes checkpoints itself).
        "cloud": ["gcsfs>=2024.2"],
        # Weights & Biases logging (log.wandb).
        "wandb": ["wandb>=0.19"],
        # Peer frameworks for `python scripts/bench.py trl` (TRL's GRPOTrainer and HF generate on
        # CPU torch); optional, never a test dependency.
        "peers": ["torch==2.13.0", "transformers>=5.17", "trl>=1.13", "accelerate"],
    },
)
