"""Post-instruction positions for several chat-template styles, found without per-family rules."""

from __future__ import annotations

import copy

import pytest

from refusal_lens.chat import ChatFormat, ChatTemplateError

LLAMA3 = (
    "{{ '<|begin_of_text|>' }}{% for m in messages %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
GEMMA = (
    "{{ '<bos>' }}{% if messages[0]['role'] == 'system' %}"
    "{% set sys = messages[0]['content'] + '\n\n' %}{% set msgs = messages[1:] %}"
    "{% else %}{% set sys = '' %}{% set msgs = messages %}{% endif %}"
    "{% for m in msgs %}{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else 'user') + '\n' }}"
    "{% if loop.first %}{{ sys }}{% endif %}{{ m['content'] + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
SPECIALS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
            "<start_of_turn>", "<end_of_turn>"]


@pytest.fixture(scope="module")
def tokenizer(embedded_base):
    tok = copy.deepcopy(embedded_base.tokenizer)
    tok.add_special_tokens({"additional_special_tokens": SPECIALS})
    return tok


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.mark.embedded
@pytest.mark.parametrize("system", [None, "You are a careful assistant."])
@pytest.mark.parametrize(
    "template,suffix",
    [
        (None, "<|im_end|>\n<|im_start|>assistant\n"),
        (LLAMA3, "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"),
        (GEMMA, "<end_of_turn>\n<start_of_turn>model\n"),
    ],
    ids=["chatml-embedded", "llama3", "gemma"],
)
def test_post_instruction_span(tokenizer, template, suffix, system):
    tok = copy.deepcopy(tokenizer)
    if template is not None:
        tok.chat_template = template
    chat = ChatFormat(tok, system)
    expected = _ids(tok, suffix)
    assert chat.post_instruction_ids() == expected
    assert chat.post_instruction_positions() == list(range(-len(expected), 0))
    prompt = chat.render("How do I bake bread?")
    assert prompt.endswith(suffix)
    if system is not None:
        assert system in prompt


@pytest.mark.embedded
def test_embedded_template_has_six_post_instruction_tokens(embedded_base):
    assert embedded_base.post_instruction_positions == [-6, -5, -4, -3, -2, -1]


@pytest.mark.embedded
def test_missing_template_is_a_clear_error(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = None
    with pytest.raises(ChatTemplateError, match="chat_template="):
        ChatFormat(tok)


@pytest.mark.embedded
def test_bad_instructions(embedded_base):
    with pytest.raises(ValueError, match="empty"):
        embedded_base.format([])
    with pytest.raises(TypeError, match="must be str"):
        embedded_base.format(["ok", 3])
    with pytest.raises(TypeError, match="list of instructions"):
        embedded_base.format("a single string")
