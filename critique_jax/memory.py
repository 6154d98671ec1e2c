"""Memory of a model's parameters and AdamW state, per device, from shapes alone (no weights):
a Markdown table for published shapes or Hugging Face ``config.json`` files.

    python -m critique_jax.memory                                   # every published shape
    python -m critique_jax.memory Qwen2.5-0.5B path/to/config.json --mesh_sizes=1,8,32
"""

from __future__ import annotations

from absl import flags

from critique_jax import cli

MESH_SIZES = flags.DEFINE_list("mesh_sizes", ["1", "8", "32"], "Device counts of the fsdp-only meshes to size.")
VERBOSE = cli.define_verbose()


def main(argv: list[str]) -> None:
    from critique_jax.analysis.state_memory import table
    from critique_jax.models.hf.published import PUBLISHED

    try:
        sizes = tuple(int(n) for n in MESH_SIZES.value)
    except ValueError:
        raise ValueError(f"--mesh_sizes={','.join(MESH_SIZES.value)}: expected integers, e.g. 1,8,32") from None
    print(table(argv[1:] or list(PUBLISHED), sizes))


if __name__ == "__main__":
    cli.run(main, VERBOSE)
