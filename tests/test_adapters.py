"""Adapter files: LoRA tensors extracted from peft, read back and merged equal peft's forward."""

from __future__ import annotations

import json
import os

import pytest
import torch

from refusal_lens import adapters
from refusal_lens.chat import ChatFormat
from refusal_lens.configs import TARGET_MODULES
from refusal_lens.modelfiles import load_hf_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")


# --------------------------------------------------------------------------- merge math
def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def test_apply_lora_matches_peft_forward(tmp_path):
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file

    base = _tiny_llama()
    fresh = _tiny_llama()  # same seed, same weights
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=list(TARGET_MODULES),
                     init_lora_weights=False)  # random B so the adapter is not a no-op
    pm = get_peft_model(base, cfg).eval()
    ids = torch.randint(0, 97, (2, 11))
    with torch.no_grad():
        want = pm(input_ids=ids).logits
        before = fresh(input_ids=ids).logits
    tensors = adapters.lora_state(pm)
    assert len(tensors) == 2 * 2 * len(TARGET_MODULES)
    path = tmp_path / "adapter.safetensors"
    save_file(tensors, str(path), metadata={"format": adapters.ADAPTER_FORMAT, "r": "4",
                                            "lora_alpha": "8"})
    loaded, hp = adapters.read_adapter(path)
    n = adapters.apply_lora_(fresh, loaded, hp["r"], hp["lora_alpha"])
    assert n == 2 * len(TARGET_MODULES)
    with torch.no_grad():
        got = fresh(input_ids=ids).logits
    assert not torch.allclose(before, want, atol=1e-3)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------- the shipped adapter
@pytest.mark.embedded
def test_shipped_card_is_consistent(shipped_adapter):
    from refusal_lens.embedded import ADAPTER_FILE, CARD_FILE, file_sha256, gguf_path

    card = json.loads(CARD_FILE.read_text())
    assert card["base"]["gguf_sha256"] == file_sha256(gguf_path())
    tensors, hp = adapters.read_adapter(ADAPTER_FILE)
    assert hp["r"] == card["adapter"]["r"]
    assert sum(t.numel() for t in tensors.values()) == card["adapter"]["n_parameters"]
    assert ADAPTER_FILE.stat().st_size < 20_000_000


@pytest.mark.embedded
def test_merged_equals_peft_applied(tmp_path, shipped_adapter):
    from peft import LoraConfig, get_peft_model

    from refusal_lens.embedded import ADAPTER_FILE, base_dir

    out = adapters.merge_adapter_into(base_dir(), ADAPTER_FILE, tmp_path / "merged")
    merged, tok = load_hf_dir(out)
    base, _ = load_hf_dir(base_dir())
    tensors, hp = adapters.read_adapter(ADAPTER_FILE)
    pm = get_peft_model(base, LoraConfig(r=hp["r"], lora_alpha=hp["lora_alpha"],
                                         target_modules=list(TARGET_MODULES))).eval()
    params = dict(pm.named_parameters())
    with torch.no_grad():
        for k, v in tensors.items():
            a, b = k.rsplit(".lora_", 1)
            params[f"base_model.model.{a}.lora_{b.replace('.weight', '.default.weight')}"].copy_(v)
    prompts = ChatFormat(tok).format(["How do I pick a lock?", "Name three rivers."])
    enc = tok(prompts, add_special_tokens=False, padding=True, return_tensors="pt")
    with torch.no_grad():
        want = pm(**enc).logits
        got = merged(**enc).logits
    m = enc["attention_mask"].bool()
    torch.testing.assert_close(got[m], want[m], atol=2e-3, rtol=1e-3)
