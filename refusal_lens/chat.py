"""Chat formatting and the post-instruction token positions, for any chat template.

The post-instruction tokens are the template tokens between the end of the user's text and
the start of the answer (for ChatML: ``<|im_end|>\\n<|im_start|>assistant\\n``). They are found
without per-family rules: the template is rendered with several different user texts, and the
longest token suffix the renderings share is the post-instruction span.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from transformers import PreTrainedTokenizerBase

_PROBES = ("Hello", "What is 2 + 2?", "zq", "Tell me a story about a dragon.")


class ChatTemplateError(ValueError):
    """The tokenizer cannot render chat prompts."""


def _messages(instruction: str, system: str | None) -> list[dict[str, str]]:
    messages = [] if system is None else [{"role": "system", "content": system}]
    messages.append({"role": "user", "content": instruction})
    return messages


@dataclass(frozen=True)
class ChatFormat:
    """Renders instructions with a tokenizer's chat template and knows the post-instruction span."""

    tokenizer: PreTrainedTokenizerBase
    system: str | None = None

    def __post_init__(self) -> None:
        if not getattr(self.tokenizer, "chat_template", None):
            raise ChatTemplateError(
                "The tokenizer has no chat template. Pass one as a Jinja string, e.g. "
                "load_model(spec, chat_template='{% for m in messages %}...{% endfor %}'), "
                "or set tokenizer.chat_template before wrapping the model."
            )

    def render(self, instruction: str, system: str | None = None) -> str:
        """One chat-formatted prompt ending where the assistant's answer starts."""
        if not isinstance(instruction, str):
            raise TypeError(
                f"Instructions must be str, got {type(instruction).__name__}: {instruction!r}. "
                "Convert them with str() or fix the data source."
            )
        sys_prompt = self.system if system is None else system
        return self.tokenizer.apply_chat_template(
            _messages(instruction, sys_prompt), tokenize=False, add_generation_prompt=True
        )

    def format(self, instructions: Sequence[str], system: str | None = None) -> list[str]:
        """Chat-formatted prompts for a list of instructions (optional system prompt)."""
        if isinstance(instructions, str):
            raise TypeError("format() takes a list of instructions; wrap a single one as [text].")
        if len(instructions) == 0:
            raise ValueError("The instruction list is empty: pass at least one instruction.")
        return [self.render(x, system) for x in instructions]

    def token_ids(self, prompt: str) -> list[int]:
        """Token ids of an already formatted prompt (the template supplies special tokens)."""
        return self.tokenizer(prompt, add_special_tokens=False)["input_ids"]

    def post_instruction_ids(self, system: str | None = None) -> list[int]:
        """Token ids of the post-instruction span, found by diffing renderings."""
        renders = [self.token_ids(self.render(p, system)) for p in _PROBES]
        n = min(len(r) for r in renders)
        k = 0
        while k < n and all(r[-1 - k] == renders[0][-1 - k] for r in renders):
            k += 1
        if k == 0:
            raise ChatTemplateError(
                "The chat template leaves no tokens between the user's text and the answer; "
                "the post-instruction positions are undefined. Pass positions explicitly."
            )
        return renders[0][len(renders[0]) - k :]

    def post_instruction_positions(self, system: str | None = None) -> list[int]:
        """Negative offsets from the end of a prompt, e.g. ``[-5, -4, -3, -2, -1]``."""
        k = len(self.post_instruction_ids(system))
        return list(range(-k, 0))

    def post_instruction_tokens(self, system: str | None = None) -> list[str]:
        """The post-instruction tokens as strings (for labels in plots and reports)."""
        return self.tokenizer.convert_ids_to_tokens(self.post_instruction_ids(system))
