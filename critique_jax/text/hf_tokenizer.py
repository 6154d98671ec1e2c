"""Hugging Face tokenizers (``tokenizer.json``) with their special ids and chat template, no transformers.

Special tokens come from ``tokenizer_config.json`` (``bos_token``/``eos_token``/``pad_token``/
``unk_token``, strings or AddedToken dicts); ``generation_config.json``'s ``eos_token_id`` (an
int or a list: several end tokens, e.g. Llama 3's ``<|eot_id|>`` and ``<|end_of_text|>``) gives
:attr:`HFTokenizer.eos_ids`, its ``pad_token_id`` a pad when the tokenizer has none (else
the first end token). The chat template (``chat_template.jinja`` or the config's
``chat_template``) is rendered as transformers' ``apply_chat_template(tokenize=False)`` does:
a sandboxed jinja2 environment with ``trim_blocks``/``lstrip_blocks``, ``raise_exception``,
a non-escaping ``tojson``, ``strftime_now`` and the special tokens as variables.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import jinja2
import jinja2.ext
import numpy as np
import tokenizers
from jinja2.sandbox import ImmutableSandboxedEnvironment

from critique_jax.text.tokenizer import Tokenizer

_SPECIAL = ("bos_token", "eos_token", "unk_token", "pad_token")


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def _raise(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _compile(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise, strftime_now=lambda fmt: datetime.now().strftime(fmt))
    return env.from_string(template)


class HFTokenizer:
    """A ``tokenizers.Tokenizer`` plus special ids and chat template. Build with :meth:`load`.

    ``encode`` never adds special tokens itself (``bos``/``eos`` flags do, as for the
    project's SentencePiece :class:`~critique_jax.text.Tokenizer`); ``decode`` drops special tokens.
    """

    def __init__(self, tokenizer: tokenizers.Tokenizer, config: dict[str, Any], generation: dict[str, Any],
                 chat_template: str | None, source: str = "tokenizer"):
        self._tok = tokenizer
        self._config = config
        self._generation = generation
        self.chat_template = chat_template
        self._template = None if chat_template is None else _compile(chat_template)
        self.special_tokens = {k: self._content(config.get(k)) for k in _SPECIAL if config.get(k) is not None}
        for name, token in self.special_tokens.items():
            if tokenizer.token_to_id(token) is None:
                raise ValueError(f"{source}: {name}={token!r} is not in the vocabulary")
        ids = {k: tokenizer.token_to_id(v) for k, v in self.special_tokens.items()}
        eos = generation.get("eos_token_id", ids.get("eos_token"))
        if eos is None:
            raise ValueError(f"{source}: no eos_token (tokenizer_config.json) or eos_token_id (generation_config.json)")
        self.eos_ids: tuple[int, ...] = tuple(eos) if isinstance(eos, list) else (eos,)
        self.eos_id: int = ids.get("eos_token", self.eos_ids[0])
        self.bos_id: int | None = ids.get("bos_token", generation.get("bos_token_id"))
        self.unk_id: int | None = ids.get("unk_token")
        pad = ids.get("pad_token", generation.get("pad_token_id"))
        self.pad_id: int = self.eos_ids[0] if pad is None else pad
        # A sequence starts with bos when the tokenizer's own post-processor puts it there
        # (Gemma, Llama 3; not Qwen, whose bos_token_id is only nominal).
        self.prompt_bos: bool = (self.bos_id is not None
                                 and tokenizer.encode("a", add_special_tokens=True).ids[:1] == [self.bos_id])

    @staticmethod
    def _content(token: str | dict[str, Any]) -> str:
        return token["content"] if isinstance(token, dict) else token

    @classmethod
    def load(cls, directory: str | Path) -> HFTokenizer:
        """From a HF model directory: tokenizer.json (+ tokenizer_config.json, generation_config.json,
        chat_template.jinja when present)."""
        directory = Path(directory)
        path = directory / "tokenizer.json"
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing file")
        config = _read_json(directory / "tokenizer_config.json")
        template = config.get("chat_template")
        if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
            template = {t["name"]: t["template"] for t in template}.get("default")
        if (directory / "chat_template.jinja").exists():
            template = (directory / "chat_template.jinja").read_text()
        return cls(tokenizers.Tokenizer.from_file(str(path)), config,
                   _read_json(directory / "generation_config.json"), template, source=str(directory))

    def save_pretrained(self, directory: str | Path) -> None:
        """Writes tokenizer.json, tokenizer_config.json (special tokens) and chat_template.jinja."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(directory / "tokenizer.json"))
        config = {k: v for k, v in self._config.items() if k != "chat_template"}
        (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
        if self.chat_template is not None:
            (directory / "chat_template.jinja").write_text(self.chat_template)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def id_to_piece(self, i: int) -> str:
        return self._tok.id_to_token(i)

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        """Token ids of ``text`` (special-token strings in it are matched), optionally with bos / eos."""
        if bos and self.bos_id is None:
            raise ValueError("this tokenizer has no bos token")
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return [self.bos_id] * bos + ids + [self.eos_id] * eos

    def encode_prompt(self, text: str) -> list[int]:
        """Ids of a prompt, the start of a sequence: with bos first when the model expects it."""
        return self.encode(text, bos=self.prompt_bos)

    def encode_batch(self, texts: Sequence[str], *, bos: bool = False, eos: bool = False) -> list[list[int]]:
        return [self.encode(t, bos=bos, eos=eos) for t in texts]

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of ``ids`` with special tokens dropped."""
        return self._tok.decode([int(i) for i in np.asarray(ids).reshape(-1)], skip_special_tokens=True)

    def decode_batch(self, batch: Sequence[Sequence[int]] | np.ndarray) -> list[str]:
        return [self.decode(ids) for ids in batch]

    def apply_chat_template(self, messages: list[dict[str, Any]], *, add_generation_prompt: bool = False,
                            tokenize: bool = False, **kwargs: Any) -> str | list[int]:
        """The rendered chat (``tokenize=False``) or its ids (encoded without added special tokens)."""
        if self._template is None:
            raise ValueError("this tokenizer has no chat template")
        messages = [{k: v for k, v in m.items() if v is not None} for m in messages]
        text = self._template.render(messages=messages, tools=None, documents=None,
                                     add_generation_prompt=add_generation_prompt,
                                     **{**self.special_tokens, **kwargs})
        return self.encode(text) if tokenize else text


def load_tokenizer(directory: str | Path) -> HFTokenizer | Tokenizer:
    """The tokenizer of a model directory: ``tokenizer.json`` (HF) or ``tokenizer.model`` (ours)."""
    directory = Path(directory)
    if (directory / "tokenizer.json").exists():
        return HFTokenizer.load(directory)
    if (directory / "tokenizer.model").exists():
        return Tokenizer.load(directory / "tokenizer.model")
    raise FileNotFoundError(f"{directory}: missing file tokenizer.json (or tokenizer.model)")
