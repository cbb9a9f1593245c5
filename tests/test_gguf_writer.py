"""GGUF support is decided from the config and tokenizer, and refused before writing."""

from __future__ import annotations

import pytest
from transformers import AutoConfig, PreTrainedTokenizerFast

from refusal_lens.gguf_writer import GGUFExportError, check_gguf_support, gguf_pre_tokenizer

TEXTS = ["how to make a cake", "write a poem about the moon", "12345 apples"]
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


def test_pre_tokenizer_names(bpe_tokenizer):
    assert gguf_pre_tokenizer(bpe_tokenizer(TEXTS)) == "gpt-2"
    assert gguf_pre_tokenizer(bpe_tokenizer(TEXTS, split="qwen2")) == "qwen2"
    with pytest.raises(GGUFExportError, match="pre-tokenizer is not one GGUF names"):
        gguf_pre_tokenizer(bpe_tokenizer(TEXTS, r"\s+"))


def test_word_level_tokenizer_is_refused(synthetic):
    with pytest.raises(GGUFExportError, match="WordLevel.*--format hf"):
        gguf_pre_tokenizer(synthetic.tokenizer)


def test_normalizer_is_refused(bpe_tokenizer):
    from tokenizers import normalizers

    tok = bpe_tokenizer(TEXTS)
    tok.backend_tokenizer.normalizer = normalizers.Lowercase()
    with pytest.raises(GGUFExportError, match="Lowercase normalizer"):
        gguf_pre_tokenizer(PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer))


@pytest.mark.parametrize("model_type, extra, message", [
    ("gpt2", {}, "model_type 'gpt2' is not llama or qwen2"),
    ("llama", {"attention_bias": True}, "llama with attention or MLP biases"),
    ("llama", {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}},
     "not the default kind"),
    ("llama", {"hidden_act": "gelu"}, "activation 'gelu'"),
    ("qwen2", {"head_dim": 16}, "head_dim"),
    ("llama", {"intermediate_size": 48, "dtype_": "q8_0"}, "intermediate_size 48; use fp16"),
])
def test_configs_gguf_cannot_describe_are_refused(model_type, extra, message, bpe_tokenizer):
    kw = dict(n_embd=32, n_layer=2, n_head=4) if model_type == "gpt2" else dict(TINY)
    extra = dict(extra)
    dtype = extra.pop("dtype_", "fp32")
    config = AutoConfig.for_model(model_type, **{**kw, **extra})
    with pytest.raises(GGUFExportError, match=message):
        check_gguf_support(config, bpe_tokenizer(TEXTS), dtype)


def test_supported_configs(bpe_tokenizer):
    tok = bpe_tokenizer(TEXTS)
    for model_type in ("llama", "qwen2"):
        assert check_gguf_support(AutoConfig.for_model(model_type, **TINY), tok, "q8_0") == "gpt-2"
    with pytest.raises(GGUFExportError, match="Unknown GGUF type 'q4_0'"):
        check_gguf_support(AutoConfig.for_model("llama", **TINY), tok, "q4_0")
