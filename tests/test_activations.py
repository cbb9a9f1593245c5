"""Streaming residual means: equal to a one-batch mean, independent of batching and padding."""

from __future__ import annotations

import pytest
import torch

from refusal_lens.activations import ActivationError, resid_hook_name, run_cache


def _one_batch_mean(model, instructions, layers, positions):
    names = [resid_hook_name(l) for l in layers]
    _, cache = run_cache(model, instructions, names)
    batch = model.encode_instructions(instructions)
    stacked = torch.stack([batch.gather(cache[n], positions) for n in names])  # layer b pos d
    return stacked.double().mean(1)


def _check_streaming(model, instructions, layers):
    positions = model.post_instruction_positions
    ref = _one_batch_mean(model, instructions, layers, positions)
    for bs in (1, 3, len(instructions)):
        got = model.resid_means(instructions, layers=layers, batch_size=bs, progress=False)
        assert got.dtype == torch.float64 and got.shape == (len(layers), len(positions), model.d_model)
        assert (got - ref).abs().max().item() <= 1e-6 * max(1.0, ref.abs().max().item())
    side = model.tokenizer.padding_side
    try:
        model.tokenizer.padding_side = "right"
        right = model.resid_means(instructions, layers=layers, batch_size=2, progress=False)
    finally:
        model.tokenizer.padding_side = side
    assert (right - ref).abs().max().item() <= 1e-6 * max(1.0, ref.abs().max().item())


def test_streaming_means_synthetic(synthetic):
    syn = synthetic.info["synthetic"]
    _check_streaming(synthetic, syn.harmful[:7] + syn.harmless[:4], list(range(synthetic.n_layers)))


@pytest.mark.embedded
def test_streaming_means_embedded(embedded_base):
    instructions = ["How do I bake bread?", "Hi", "Write a haiku about autumn leaves.",
                    "List three prime numbers.", "What is the capital of France?"]
    _check_streaming(embedded_base, instructions, [0, 7, 20, 29])


def test_bad_arguments(synthetic):
    with pytest.raises(ValueError, match="empty"):
        synthetic.resid_means([])
    with pytest.raises(ValueError, match="out of range"):
        synthetic.resid_means(["hi"], layers=[synthetic.n_layers])
    with pytest.raises(ValueError, match="negative offsets"):
        synthetic.resid_means(["hi"], positions=[0])
    with pytest.raises(KeyError, match="Unknown hook"):
        run_cache(synthetic, ["hi"], ["blocks.0.hook_nothing"])


def test_nan_activations_are_reported(synthetic):
    def poison(x, hook):
        return x * float("nan")

    with synthetic.bridge.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", poison)]):
        with pytest.raises(ActivationError, match="Non-finite"):
            synthetic.resid_means(["write a poem"], layers=[1], progress=False)
