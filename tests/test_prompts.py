"""Prompt formats: marker tokens (the project tokenizer), a Hugging Face chat template, plain text."""

from pathlib import Path

import pytest

from critique_jax.text import critique_prompt, load_tokenizer, refine_prompt, solve_prompt
from critique_jax.text.prompt_format import CRITIQUE_REQUEST, REFINE_REQUEST, prompt_format

GOLDEN_TOKENIZER = Path(__file__).parent / "goldens" / "hf" / "tokenizer"


@pytest.fixture(scope="module")
def hf_tok():
    return load_tokenizer(GOLDEN_TOKENIZER)


def test_markers_are_the_project_templates():
    fmt = prompt_format("auto", object(), instruction="ignored by markers")  # not a Hugging Face tokenizer
    assert fmt.kind == "markers"
    assert fmt.solve("1+2") == solve_prompt("1+2")
    assert fmt.critique("1+2", "answer: 3") == critique_prompt("1+2", "answer: 3")
    assert fmt.refine("1+2", "answer: 4", "verdict: wrong") == refine_prompt("1+2", "answer: 4", "verdict: wrong")


def test_chat_prompts_are_the_tokenizers_template(hf_tok):
    fmt = prompt_format("auto", hf_tok, instruction="End with 'answer: <number>'.", system="Be brief.")
    assert fmt.kind == "chat"
    system = {"role": "system", "content": "Be brief."}
    ask = {"role": "user", "content": "What is 6 x 7?\n\nEnd with 'answer: <number>'."}

    def rendered(messages):
        text = hf_tok.apply_chat_template(messages, add_generation_prompt=True)
        bos = hf_tok.special_tokens.get("bos_token")
        return text[len(bos):] if hf_tok.prompt_bos and text.startswith(bos) else text

    assert fmt.solve("What is 6 x 7?") == rendered([system, ask])
    assert fmt.critique("What is 6 x 7?", "6 x 7 = 43\nanswer: 43") == rendered(
        [system, {"role": "user", "content": f"Problem:\nWhat is 6 x 7?\n\nSolution:\n6 x 7 = 43\nanswer: 43\n\n"
                                             f"{CRITIQUE_REQUEST}"}])
    refine = fmt.refine("What is 6 x 7?", "answer: 43", "verdict: wrong")
    assert refine == rendered([system, ask, {"role": "assistant", "content": "answer: 43"},
                               {"role": "user", "content": f"{REFINE_REQUEST}\nverdict: wrong\n\nWrite a corrected "
                                                           "solution. End with 'answer: <number>'."}])
    ids = hf_tok.encode_prompt(fmt.solve("What is 6 x 7?"))
    if hf_tok.bos_id is not None:  # one bos at most, however the template starts
        assert ids[:2].count(hf_tok.bos_id) <= 1


def test_plain_prompts_and_errors(hf_tok):
    fmt = prompt_format("plain", hf_tok, instruction="Show your steps.")
    assert fmt.solve("2+2?") == "Question: 2+2?\nShow your steps.\nSolution:\n"
    assert fmt.refine("2+2?", "answer: 5", "verdict: wrong").endswith("Critique:\nverdict: wrong\nCorrected solution:\n")
    with pytest.raises(ValueError, match=r"prompt.format='markers' needs the project tokenizer"):
        prompt_format("markers", hf_tok)
    with pytest.raises(ValueError, match=r"prompt.format='chat' needs a Hugging Face tokenizer with a chat template"):
        prompt_format("chat", object())
    with pytest.raises(ValueError, match=r"prompt.format='fancy': expected one of"):
        prompt_format("fancy", hf_tok)
