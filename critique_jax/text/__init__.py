"""Text layer: SentencePiece and Hugging Face tokenizers, prompt/critique templates."""

from critique_jax.text.templates import (
    MARKERS,
    critique_prompt,
    format_step_critique,
    parse_critique,
    refine_prompt,
    solve_prompt,
)
from critique_jax.text.tokenizer import (
    CORPUS_VERSION,
    DEFAULT_VOCAB_SIZE,
    Tokenizer,
    default_cache_dir,
    task_corpus,
    tokenizer_cache_path,
    tokenizer_for_task,
    train_tokenizer,
)
from critique_jax.text.hf_tokenizer import HFTokenizer, load_tokenizer

__all__ = [
    "CORPUS_VERSION",
    "DEFAULT_VOCAB_SIZE",
    "HFTokenizer",
    "MARKERS",
    "Tokenizer",
    "critique_prompt",
    "default_cache_dir",
    "format_step_critique",
    "load_tokenizer",
    "parse_critique",
    "refine_prompt",
    "solve_prompt",
    "task_corpus",
    "tokenizer_cache_path",
    "tokenizer_for_task",
    "train_tokenizer",
]
