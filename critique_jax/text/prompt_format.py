"""How solve, critique and refine prompts are written for the policy's tokenizer (config
``prompt.*``). Three formats:

* ``markers`` — the project tokenizer's marker tokens (:mod:`critique_jax.text.templates`): what
  the small models trained from scratch read;
* ``chat`` — a Hugging Face instruct model's own chat template: an optional system prompt, the
  question and the answer-format instruction as the user turn; a critique request as a user turn
  holding the question and the solution; a refinement as a second user turn after the model's
  own solution, holding the critique;
* ``plain`` — labelled plain text for base models (``Question:`` / ``Solution:`` /
  ``Critique:``), the instruction on its own line.

``auto`` (the default) is ``markers`` with the project tokenizer, ``chat`` with a Hugging Face
tokenizer that has a chat template, else ``plain``. The instruction is ``prompt.instruction``,
or the task's own (:attr:`~critique_jax.tasks.base.Task.instructions`) when empty.
A rendered chat that starts with the bos token loses it when the tokenizer's
``encode_prompt`` adds one, so a prompt never starts with two.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from critique_jax.text import templates
from critique_jax.text.hf_tokenizer import HFTokenizer

PROMPT_FORMATS = ("auto", "markers", "chat", "plain")
CRITIQUE_REQUEST = ("Check this solution step by step. Say which step is the first wrong one, if any, and end with "
                    "'verdict: correct' or 'verdict: wrong'.")
REFINE_REQUEST = "Here is a critique of your solution:"


@dataclasses.dataclass(frozen=True)
class PromptFormat:
    """Writes prompts; ``render`` (chat only) turns messages into the template's text."""

    kind: str
    instruction: str = ""
    system: str = ""
    render: Callable[[list[dict[str, str]]], str] | None = None

    def _chat(self, *turns: str) -> str:
        """Alternating user / assistant turns (the first is the user's), ending with the model's."""
        messages = [{"role": "system", "content": self.system}] if self.system else []
        messages += [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
        return self.render(messages)

    def _ask(self, question: str) -> str:
        return f"{question}\n\n{self.instruction}" if self.instruction else question

    def solve(self, question: str) -> str:
        """The prompt asking for a solution to ``question``."""
        if self.kind == "markers":
            return templates.solve_prompt(question)
        if self.kind == "chat":
            return self._chat(self._ask(question))
        return f"Question: {question}\n{self.instruction + chr(10) if self.instruction else ''}Solution:\n"

    def critique(self, question: str, solution: str) -> str:
        """The prompt asking for a critique of ``solution``."""
        if self.kind == "markers":
            return templates.critique_prompt(question, solution)
        if self.kind == "chat":
            return self._chat(f"Problem:\n{question}\n\nSolution:\n{solution}\n\n{CRITIQUE_REQUEST}")
        return f"Question: {question}\nSolution:\n{solution}\nCritique:\n"

    def refine(self, question: str, solution: str, critique: str) -> str:
        """The prompt asking for a new solution after ``solution`` and its ``critique``."""
        if self.kind == "markers":
            return templates.refine_prompt(question, solution, critique)
        if self.kind == "chat":
            return self._chat(self._ask(question), solution,
                              f"{REFINE_REQUEST}\n{critique}\n\nWrite a corrected solution. {self.instruction}".strip())
        return f"Question: {question}\nSolution:\n{solution}\nCritique:\n{critique}\nCorrected solution:\n"


def prompt_format(kind: str, tok: Any, instruction: str = "", system: str = "") -> PromptFormat:
    """The prompt format ``kind`` (:data:`PROMPT_FORMATS`) for tokenizer ``tok``; errors name the
    config key ``prompt.format``."""
    if kind not in PROMPT_FORMATS:
        raise ValueError(f"config prompt.format={kind!r}: expected one of {list(PROMPT_FORMATS)}")
    chat_ok = isinstance(tok, HFTokenizer) and tok.chat_template is not None
    if kind == "auto":
        kind = "chat" if chat_ok else "plain" if isinstance(tok, HFTokenizer) else "markers"
    if kind == "markers" and isinstance(tok, HFTokenizer):
        raise ValueError("config prompt.format='markers' needs the project tokenizer's marker tokens; a Hugging Face "
                         "tokenizer reads 'chat' (instruct models) or 'plain' (base models)")
    if kind == "chat" and not chat_ok:
        raise ValueError("config prompt.format='chat' needs a Hugging Face tokenizer with a chat template "
                         "(tokenizer_config.json chat_template or chat_template.jinja); use 'plain'")
    if kind != "chat":
        return PromptFormat(kind, instruction, system)
    bos = tok.special_tokens.get("bos_token") if tok.prompt_bos else None

    def render(messages: list[dict[str, str]]) -> str:
        text = tok.apply_chat_template(messages, add_generation_prompt=True)
        return text[len(bos):] if bos and text.startswith(bos) else text

    return PromptFormat("chat", instruction, system, render)
