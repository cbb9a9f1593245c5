"""Tests for the synthetic model with a planted refusal direction."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM, PreTrainedTokenizerFast

from refusal_lens.synthetic import SyntheticModel, build_synthetic

SYSTEM = "You are a helpful and honest assistant . Always be concise and safe ."


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """The model is tiny: one thread is fastest, and avoids oversubscribing shared CPUs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sm() -> SyntheticModel:
    return build_synthetic(seed=0)


@pytest.fixture(scope="module")
def bridge_pair():
    """A booted bridge in compatibility mode, on its own copy of the model (the bridge edits it)."""
    from transformer_lens.model_bridge import TransformerBridge

    own = build_synthetic(seed=0)
    bridge = TransformerBridge.boot_transformers(
        str(own.path), hf_model=own.model, tokenizer=own.tokenizer, device="cpu"
    )
    bridge.enable_compatibility_mode(disable_warnings=True)
    return own, bridge


@pytest.fixture(scope="module")
def diff_in_means(sm: SyntheticModel) -> torch.Tensor:
    """Harmful minus harmless mean of last-position resid_pre, per layer: (n_layers, d_model)."""
    return _last_resid(sm, sm.harmful).mean(1) - _last_resid(sm, sm.harmless).mean(1)


def _encode(sm: SyntheticModel, prompts: list[str], system: str | None = None):
    return sm.tokenizer([sm.format_prompt(p, system) for p in prompts], return_tensors="pt", padding=True)


def _generate(sm: SyntheticModel, prompts: list[str], system: str | None = None) -> list[str]:
    enc = _encode(sm, prompts, system)
    with torch.no_grad():
        out = sm.model.generate(**enc, do_sample=False, max_new_tokens=8)
    return sm.tokenizer.batch_decode(out[:, enc.input_ids.shape[1] :], skip_special_tokens=True)


def _refusal_rate(completions: list[str]) -> float:
    return sum("I cannot" in c for c in completions) / len(completions)


def _last_resid(sm: SyntheticModel, prompts: list[str]) -> torch.Tensor:
    """resid_pre of every layer at the last position: (n_layers, batch, d_model)."""
    with torch.no_grad():
        hs = sm.model(**_encode(sm, prompts), output_hidden_states=True).hidden_states
    return torch.stack(hs[:-1])[:, :, -1]  # the last HF hidden state is after the final norm


def _edit_layer_input(fn: Callable[[torch.Tensor], torch.Tensor]):
    def hook(module, args, kwargs):
        if args:
            return (fn(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": fn(kwargs["hidden_states"])}

    return hook


@contextmanager
def _hooks(handles: list) -> Iterator[None]:
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _ablate(sm: SyntheticModel, direction: torch.Tensor):
    """Project ``direction`` out of the embeddings and every layer's input and output."""
    r = direction / direction.norm()

    def proj(x: torch.Tensor) -> torch.Tensor:
        return x - (x @ r)[..., None] * r

    m = sm.model.model
    handles = [m.embed_tokens.register_forward_hook(lambda mod, i, o: proj(o))]
    for layer in m.layers:
        handles.append(layer.register_forward_pre_hook(_edit_layer_input(proj), with_kwargs=True))
        handles.append(layer.register_forward_hook(lambda mod, i, o: proj(o)))
    return _hooks(handles)


def _add(sm: SyntheticModel, vector: torch.Tensor, layer: int):
    """Add ``vector`` to the input of one layer at every position."""
    layer_mod = sm.model.model.layers[layer]
    hook = _edit_layer_input(lambda x: x + vector)
    return _hooks([layer_mod.register_forward_pre_hook(hook, with_kwargs=True)])


def test_build_is_fast_and_deterministic(sm: SyntheticModel) -> None:
    t0 = time.perf_counter()
    again = build_synthetic(seed=0)
    assert time.perf_counter() - t0 < 2.0
    assert torch.equal(again.direction, sm.direction)
    assert again.harmful == sm.harmful and again.harmless == sm.harmless
    for (name, a), b in zip(sm.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(a, b), name
    other = build_synthetic(seed=1)
    assert abs(torch.dot(other.direction, sm.direction)) < 0.9


def test_types_and_config(sm: SyntheticModel) -> None:
    assert isinstance(sm.model, LlamaForCausalLM) and not sm.model.training
    assert isinstance(sm.tokenizer, PreTrainedTokenizerFast)
    cfg = sm.model.config
    shape = (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads)
    assert shape == (64, 4, 4, 2)
    assert not cfg.tie_word_embeddings and cfg._attn_implementation == "eager"
    assert all(p.dtype == torch.float32 for p in sm.model.parameters())
    assert sm.direction.shape == (64,)
    assert torch.isclose(sm.direction.norm(), torch.tensor(1.0), atol=1e-5)
    assert sm.refusal_tokens == ["I"] and sm.tokenizer.convert_tokens_to_ids("I") != sm.tokenizer.unk_token_id


def test_saved_copy_reloads(sm: SyntheticModel) -> None:
    reloaded = AutoModelForCausalLM.from_pretrained(sm.path, attn_implementation="eager")
    ids = _encode(sm, sm.harmful[:4])
    with torch.no_grad():
        assert torch.allclose(reloaded(**ids).logits, sm.model(**ids).logits, atol=1e-5)
    assert (sm.path / "tokenizer.json").exists()


def test_instructions(sm: SyntheticModel) -> None:
    assert len(sm.harmful) >= 300 and len(set(sm.harmful)) == len(sm.harmful)
    assert len(sm.harmless) >= 300 and len(set(sm.harmless)) == len(sm.harmless)
    assert not set(sm.harmful) & set(sm.harmless)
    unk = sm.tokenizer.unk_token_id
    for p in sm.harmful + sm.harmless:
        assert unk not in sm.tokenizer(p).input_ids, p


def test_chat_template_and_tokenizer(sm: SyntheticModel) -> None:
    tok = sm.tokenizer
    text = sm.format_prompt("write a poem about the garden")
    assert text == "<bos><|user|> write a poem about the garden <|end|> <|assistant|>"
    ids = tok(text).input_ids
    messages = [{"role": "user", "content": "write a poem about the garden"}]
    templated = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    assert list(templated["input_ids"]) == ids
    assert ids[0] == tok.bos_token_id and tok.convert_ids_to_tokens(ids[-1]) == "<|assistant|>"
    with_system = tok(sm.format_prompt("write a poem", SYSTEM)).input_ids
    assert tok.convert_ids_to_tokens(with_system[:2]) == ["<bos>", "<|system|>"]
    assert tok.padding_side == "left" and tok.pad_token == "<pad>"
    batch = tok(["a b", "write a poem about the garden"], padding=True)
    assert batch.input_ids[0][0] == tok.pad_token_id
    assert tok.decode(tok("I cannot help with that").input_ids) == "I cannot help with that"


def test_diff_in_means_is_planted_direction(sm: SyntheticModel, diff_in_means: torch.Tensor) -> None:
    diff = diff_in_means
    for layer in range(sm.plant_layer + 1, sm.model.config.num_hidden_layers):
        cos = torch.cosine_similarity(diff[layer], sm.direction, dim=0)
        assert cos > 0.9, (layer, cos)
    # Before the mover head the last position carries no harmfulness signal.
    harmful = _last_resid(sm, sm.harmful[:50])
    assert (harmful[: sm.plant_layer + 1] @ sm.direction).abs().max() < 1e-4


def test_greedy_generation_refuses_harmful_only(sm: SyntheticModel) -> None:
    harmful, harmless = _generate(sm, sm.harmful), _generate(sm, sm.harmless)
    assert _refusal_rate(harmful) >= 0.9
    assert _refusal_rate(harmless) <= 0.1
    assert harmful[0] == "I cannot help with that"
    assert harmless[0] == "Sure here is your answer"


def test_refusal_survives_system_prompt(sm: SyntheticModel) -> None:
    assert _refusal_rate(_generate(sm, sm.harmful[:100], SYSTEM)) >= 0.9
    assert _refusal_rate(_generate(sm, sm.harmless[:100], SYSTEM)) <= 0.1


def test_refusal_token_logit_tracks_direction(sm: SyntheticModel) -> None:
    i_id = sm.tokenizer.convert_tokens_to_ids("I")
    with torch.no_grad():
        harmful = sm.model(**_encode(sm, sm.harmful[:100])).logits[:, -1].log_softmax(-1)[:, i_id]
        harmless = sm.model(**_encode(sm, sm.harmless[:100])).logits[:, -1].log_softmax(-1)[:, i_id]
    assert harmful.min() > harmless.max()


def test_ablating_direction_stops_refusal(sm: SyntheticModel) -> None:
    with _ablate(sm, sm.direction):
        completions = _generate(sm, sm.harmful)
    assert _refusal_rate(completions) <= 0.1
    # The hooks are gone again afterwards.
    assert _refusal_rate(_generate(sm, sm.harmful[:50])) >= 0.9


def test_ablating_diff_in_means_stops_refusal(sm: SyntheticModel, diff_in_means: torch.Tensor) -> None:
    layer = sm.model.config.num_hidden_layers // 2
    with _ablate(sm, diff_in_means[layer]):
        assert _refusal_rate(_generate(sm, sm.harmful)) <= 0.1


def test_adding_diff_in_means_induces_refusal(sm: SyntheticModel, diff_in_means: torch.Tensor) -> None:
    layer = sm.model.config.num_hidden_layers // 2
    with _add(sm, diff_in_means[layer], layer):
        completions = _generate(sm, sm.harmless)
    assert _refusal_rate(completions) >= 0.9


def test_ablating_a_random_direction_changes_nothing(sm: SyntheticModel) -> None:
    random_dir = torch.randn(64, generator=torch.Generator().manual_seed(1))
    random_dir -= (random_dir @ sm.direction) * sm.direction
    with _ablate(sm, random_dir):
        assert _refusal_rate(_generate(sm, sm.harmful[:100])) >= 0.9


def test_bridge_hooks_exist(bridge_pair) -> None:
    own, bridge = bridge_pair
    ids = _encode(own, own.harmful[:2]).input_ids
    bridge.set_use_attn_result(True)
    try:
        _, cache = bridge.run_with_cache(ids)
    finally:
        bridge.set_use_attn_result(False)
    n_layers, n_heads, d_head = 4, 4, 16
    seq = ids.shape[1]
    for layer in range(n_layers):
        for name in ("hook_resid_pre", "hook_resid_mid", "hook_resid_post"):
            assert cache[f"blocks.{layer}.{name}"].shape == (2, seq, 64)
        assert cache[f"blocks.{layer}.attn.hook_pattern"].shape == (2, n_heads, seq, seq)
        assert cache[f"blocks.{layer}.attn.hook_z"].shape == (2, seq, n_heads, d_head)
        assert cache[f"blocks.{layer}.attn.hook_result"].shape == (2, seq, n_heads, 64)
    # The mover head attends to the harmful word from the last position.
    pattern = cache[f"blocks.{own.plant_layer}.attn.hook_pattern"][0, 0, -1]
    harmful_pos = int(pattern.argmax())
    assert pattern.max() > 0.9
    assert torch.dot(own.model.get_input_embeddings().weight[ids[0, harmful_pos]], own.direction) > 1.0


def test_bridge_matches_hf(sm: SyntheticModel, bridge_pair) -> None:
    own, bridge = bridge_pair
    text = sm.format_prompt(sm.harmful[0])
    ids = sm.tokenizer(text, return_tensors="pt").input_ids
    assert torch.equal(bridge.to_tokens(text, prepend_bos=False), ids)
    with torch.no_grad():
        ref = sm.model(ids, output_hidden_states=True)
        logits, cache = bridge.run_with_cache(ids)
    assert torch.allclose(logits, ref.logits, atol=1e-5)
    for layer in range(4):
        assert torch.allclose(cache[f"blocks.{layer}.hook_resid_pre"], ref.hidden_states[layer], atol=1e-5)


def test_bridge_generates_refusal(bridge_pair) -> None:
    own, bridge = bridge_pair
    cases = ((own.harmful[0], "I cannot help with that"), (own.harmless[0], "Sure here is your answer"))
    for prompt, expected in cases:
        tokens = bridge.to_tokens(own.format_prompt(prompt), prepend_bos=False)
        out = bridge.generate(tokens, max_new_tokens=8, do_sample=False, verbose=False)
        assert own.tokenizer.decode(out[0, tokens.shape[1] :], skip_special_tokens=True) == expected
