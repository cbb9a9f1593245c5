"""Batches of prompts: grouped by token length, capped in rows and padded tokens.

Generation, scoring and every activation pass batch prompts the same way, so a few long prompts
do not pad a whole batch and a reduction over prompts (a mean, a rate) does not depend on the
order prompts were given in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, Sequence

from .console import progress_bar

if TYPE_CHECKING:
    from .model import Batch, LensModel

__all__ = ["length_batches", "iter_batches"]


def length_batches(lengths: Sequence[int], max_rows: int, max_tokens: int | None = None,
                   sort: bool = True) -> list[list[int]]:
    """Indices grouped into batches: sorted by length (unless ``sort=False``: consecutive),
    each batch at most ``max_rows`` rows and (when given) at most ``max_tokens`` padded tokens
    (rows x longest), so a few long prompts do not pad a whole batch. A single over-long row
    still gets a batch."""
    if max_rows < 1:
        raise ValueError(f"batch_size must be >= 1, got {max_rows}.")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i]) if sort else range(len(lengths))
    batches: list[list[int]] = []
    longest = 0
    for i in order:
        longest = max(longest, lengths[i])
        if (not batches or len(batches[-1]) >= max_rows
                or (max_tokens is not None and (len(batches[-1]) + 1) * longest > max_tokens)):
            batches.append([i])
            longest = lengths[i]
        else:
            batches[-1].append(i)
    return batches


def iter_batches(
    model: "LensModel",
    instructions: Sequence[str],
    batch_size: int,
    system: str | None = None,
    desc: str | None = None,
    sort_by_length: bool = False,
    max_tokens: int | None = None,
) -> Iterator["Batch"]:
    """Format, tokenize and yield batches, with a progress bar.

    ``sort_by_length`` groups prompts of similar length (less padding, same results for any
    order-independent reduction such as a mean); ``max_tokens`` also caps each batch's padded
    size (rows x longest prompt, see :func:`length_batches`).
    """
    if isinstance(instructions, str) or len(instructions) == 0:
        raise ValueError("The instruction list is empty: pass at least one instruction.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    prompts = model.format(instructions, system)
    lengths = ([len(ids) for ids in model.tokenizer(prompts, add_special_tokens=False)["input_ids"]]
               if sort_by_length or max_tokens is not None else [0] * len(prompts))
    groups = length_batches(lengths, batch_size, max_tokens, sort=sort_by_length)
    for rows in progress_bar(groups, desc=desc, disable=desc is None, leave=False):
        yield model.tokenize([prompts[i] for i in rows])
