"""GGUF files from plain Hugging Face llama- and qwen2-family models, tokenizer included.

Written with the ``gguf`` package in the layout llama.cpp's ``convert_hf_to_gguf.py`` uses for
these two architectures, so llama.cpp (and Ollama) and transformers' GGUF loader read them:
tensor names from ``gguf.get_tensor_name_map``; llama's query/key rows permuted into llama.cpp's
interleaved rotary order (qwen2 keeps the Hugging Face order); 1-D tensors (norms, biases) in
F32 whatever the file type; the byte-level BPE vocabulary, merges, special tokens and chat
template as ``tokenizer.*`` metadata. Support is decided from the config and the tokenizer, not
the model's name: a config or tokenizer these files cannot describe exactly is refused before
anything is written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .configs import GGUF_TYPES

__all__ = ["GGUF_TYPES", "GGUFExportError", "gguf_pre_tokenizer", "check_gguf_support",
           "write_gguf"]

_ARCHS = {"llama": "LLAMA", "qwen2": "QWEN2"}  # model_type -> gguf.MODEL_ARCH member
# Pre-tokenizer split patterns of byte-level BPE vocabularies, by llama.cpp's name for them.
_SPLITS = {
    "qwen2": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
             r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "llama-bpe": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}"
                 r"\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
}


class GGUFExportError(ValueError):
    """A model or tokenizer that a GGUF file cannot describe exactly."""


def gguf_pre_tokenizer(tokenizer: Any) -> str:
    """llama.cpp's name (``tokenizer.ggml.pre``) for the way ``tokenizer`` splits text.

    Only byte-level BPE tokenizers are written: GPT-2's splitting (``gpt-2``), and a
    ``Split`` on Qwen2's (``qwen2``) or Llama 3's (``llama-bpe``) pattern followed by byte-level
    mapping, which is what transformers' GGUF loader rebuilds for those names. GGUF has no
    normalizer: Qwen2's NFC one is accepted (the file's tokenizer gives the same ids on
    NFC-normalized text, which is what text almost always is); any other is refused.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise GGUFExportError(f"{type(tokenizer).__name__} has no fast (tokenizers) backend; "
                              "GGUF export needs a byte-level BPE tokenizer.json.")
    spec = json.loads(backend.to_str())
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    problem = None
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        problem = f"its model is {model.get('type')} (byte_fallback={model.get('byte_fallback')})"
    elif spec.get("normalizer") not in (None, {"type": "NFC"}):
        problem = f"it has a {spec['normalizer'].get('type')} normalizer"
    elif (spec.get("decoder") or {}).get("type") != "ByteLevel":
        problem = f"its decoder is {(spec.get('decoder') or {}).get('type')}, not ByteLevel"
    if problem is None:
        if pre.get("type") == "ByteLevel" and pre.get("use_regex", True) \
                and not pre.get("add_prefix_space"):
            return "gpt-2"
        parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else []
        if (len(parts) == 2 and parts[0].get("type") == "Split"
                and parts[0].get("behavior") == "Isolated" and not parts[0].get("invert")
                and parts[1].get("type") == "ByteLevel" and not parts[1].get("use_regex", True)
                and not parts[1].get("add_prefix_space")):
            pattern = (parts[0].get("pattern") or {}).get("Regex")
            for name, split in _SPLITS.items():
                if pattern == split:
                    return name
        problem = f"its pre-tokenizer is not one GGUF names ({json.dumps(pre)[:200]})"
    raise GGUFExportError(
        f"Cannot write this tokenizer to GGUF: {problem}. Supported: byte-level BPE with GPT-2, "
        f"Qwen2 or Llama 3 splitting (llama- and qwen2-family tokenizers). Export with "
        "--format hf instead.")


def _text_config(config: Any) -> Any:
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _rope(text: Any) -> dict[str, Any]:
    rope = dict(getattr(text, "rope_parameters", None) or {})
    rope.setdefault("rope_theta", getattr(text, "rope_theta", None))
    rope.setdefault("rope_type", (getattr(text, "rope_scaling", None) or {}).get("rope_type",
                                                                               "default"))
    return rope


def check_gguf_support(config: Any, tokenizer: Any, dtype: str = "fp32") -> str:
    """Raise :class:`GGUFExportError` unless a GGUF file of type ``dtype`` can describe this
    model exactly; return the tokenizer's pre-tokenizer name. Cheap: reads only the config and
    tokenizer."""
    if dtype not in GGUF_TYPES:
        raise GGUFExportError(f"Unknown GGUF type {dtype!r}; use one of {', '.join(GGUF_TYPES)}.")
    text = _text_config(config)
    kind = getattr(text, "model_type", None)
    heads, hidden = text.num_attention_heads, text.hidden_size
    problems = []
    if dtype == "q8_0":  # Q8_0 packs rows in blocks of 32 values
        widths = {"hidden_size": hidden, "intermediate_size": getattr(text, "intermediate_size", 0),
                  "attention width": heads * (getattr(text, "head_dim", None) or hidden // heads)}
        odd = [f"{k} {v}" for k, v in widths.items() if v % 32]
        if odd:
            problems.append(f"q8_0 needs row widths that are multiples of 32 ({', '.join(odd)}; "
                            "use fp16)")
    if kind not in _ARCHS:
        problems.append(f"model_type {kind!r} is not llama or qwen2 (the architectures this "
                        "export writes)")
    else:
        if _rope(text)["rope_type"] != "default" or _rope(text)["rope_theta"] is None:
            problems.append(f"rotary embedding {_rope(text)} is not the default kind")
        if getattr(text, "hidden_act", "silu") != "silu":
            problems.append(f"activation {text.hidden_act!r} is not silu")
        if kind == "llama" and (getattr(text, "attention_bias", False)
                                or getattr(text, "mlp_bias", False)):
            problems.append("llama with attention or MLP biases")
        if kind == "qwen2" and getattr(text, "use_sliding_window", False):
            problems.append("qwen2 with sliding-window attention")
        if kind == "qwen2" and (getattr(text, "head_dim", None) or hidden // heads) \
                != hidden // heads:
            problems.append("qwen2 with head_dim != hidden_size / num_attention_heads")
    if problems:
        only_width = len(problems) == 1 and problems[0].startswith("q8_0")
        raise GGUFExportError("Cannot write this model to GGUF: " + "; ".join(problems)
                              + ("." if only_width else ". Export with --format hf instead."))
    return gguf_pre_tokenizer(tokenizer)


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Hugging Face's half-split rotary rows -> llama.cpp's interleaved ones (per head)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2) \
        .reshape(w.shape)


def _add_tokenizer(writer: Any, tokenizer: Any, n_vocab: int, pre: str) -> None:
    import gguf

    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= n_vocab:
        raise GGUFExportError(f"The tokenizer has ids up to {max(vocab.values())} but the model's "
                              f"embedding has only {n_vocab} rows.")
    by_id = {i: t for t, i in vocab.items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in by_id:  # rows the model pads its vocabulary with
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL if i not in added else
                         gguf.TokenType.CONTROL if added[i].special else
                         gguf.TokenType.USER_DEFINED)
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"].get("merges", [])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    for attr, add in (("bos_token_id", writer.add_bos_token_id),
                      ("eos_token_id", writer.add_eos_token_id),
                      ("unk_token_id", writer.add_unk_token_id),
                      ("pad_token_id", writer.add_pad_token_id)):
        if getattr(tokenizer, attr, None) is not None:
            add(int(getattr(tokenizer, attr)))
    # What the tokenizer adds around text by itself, measured rather than read from flags.
    with_special = tokenizer("a")["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    extra = len(with_special) - len(plain)
    writer.add_add_bos_token(extra > 0 and with_special[0] == tokenizer.bos_token_id)
    writer.add_add_eos_token(extra > 0 and with_special[-1] == tokenizer.eos_token_id)
    writer.add_add_space_prefix(False)
    if isinstance(tokenizer.chat_template, str):
        writer.add_chat_template(tokenizer.chat_template)


@torch.no_grad()
def write_gguf(hf_model: nn.Module, tokenizer: Any, path: str | Path, dtype: str = "fp32",
               name: str = "") -> Path:
    """Write ``hf_model`` (a plain llama/qwen2 ``...ForCausalLM``) and ``tokenizer`` as one GGUF
    file of type ``dtype`` (a key of :data:`GGUF_TYPES`), norms and biases in F32."""
    import gguf
    from gguf.quants import quantize

    pre = check_gguf_support(hf_model.config, tokenizer, dtype)
    text = _text_config(hf_model.config)
    kind, heads = text.model_type, text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    arch = getattr(gguf.MODEL_ARCH, _ARCHS[kind])
    tensor_type, file_type = (getattr(gguf.GGMLQuantizationType, GGUF_TYPES[dtype][0]),
                              getattr(gguf.LlamaFileType, GGUF_TYPES[dtype][1]))
    state = hf_model.state_dict()
    n_vocab = int(hf_model.get_input_embeddings().weight.shape[0])

    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name or getattr(hf_model.config, "name_or_path", "") or kind)
    writer.add_context_length(int(text.max_position_embeddings))
    writer.add_embedding_length(int(text.hidden_size))
    writer.add_block_count(int(text.num_hidden_layers))
    writer.add_feed_forward_length(int(text.intermediate_size))
    writer.add_head_count(int(heads))
    writer.add_head_count_kv(int(kv_heads))
    writer.add_rope_freq_base(float(_rope(text)["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(text.rms_norm_eps))
    writer.add_rope_dimension_count(int(head_dim))
    if head_dim != text.hidden_size // heads:
        writer.add_key_length(int(head_dim))
        writer.add_value_length(int(head_dim))
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(int(file_type))
    if tensor_type == gguf.GGMLQuantizationType.Q8_0:
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_tokenizer(writer, tokenizer, n_vocab, pre)

    names = gguf.get_tensor_name_map(arch, int(text.num_hidden_layers))
    for hf_name, tensor in state.items():
        module, _, suffix = hf_name.rpartition(".")
        gguf_name = names.get_name(module)
        if gguf_name is None:
            raise GGUFExportError(f"{hf_name} has no GGUF name for {kind}; this checkpoint has "
                                  "tensors the architecture's GGUF layout does not.")
        data = tensor.detach().to(torch.float32).cpu().numpy()
        if kind == "llama" and module.endswith(("self_attn.q_proj", "self_attn.k_proj")):
            data = _permute(data, heads if module.endswith("q_proj") else kv_heads)
        qtype = tensor_type if data.ndim > 1 else gguf.GGMLQuantizationType.F32
        if qtype == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(f"{gguf_name}.{suffix}", np.ascontiguousarray(data))
        elif qtype == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(f"{gguf_name}.{suffix}", data.astype(np.float16))
        else:
            writer.add_tensor(f"{gguf_name}.{suffix}", quantize(data, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=False)
    writer.close()
    return Path(path)
