"""Exports: plain transformers loads the HF directory cleanly (also as transformers 4.x reads its
config); the GGUF file round-trips through transformers' GGUF loader; cards, records, CLI."""

from __future__ import annotations

import io
import json
import logging
import warnings
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from transformers import (AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast)

from refusal_lens.cli import export_cli, info_cli
from refusal_lens.directions import Direction
from refusal_lens.export import (EXPORT_META, ExportError, export_gguf, export_hf,
                                 load_effect, read_export_meta)
from refusal_lens.gguf_writer import GGUFExportError
from refusal_lens.interventions import ablation_hooks
from refusal_lens.model import wrap_hf
from refusal_lens.orthogonalize import orthogonalize

HF_TOL = {"fp32": 1e-5}  # reloaded vs in-memory logits; bf16/fp16 are checked against a cast copy
# GGUF logits vs the fp32 HF export of the same edited model, tiny random models (d_model 32,
# logits of order 1): F32 is exact up to summation order; F16/BF16/Q8_0 round the weights.
GGUF_TOL = {"fp32": 1e-5, "fp16": 5e-3, "bf16": 4e-2, "q8_0": 1e-1}


def _real_max(a: torch.Tensor, b: torch.Tensor, batch) -> float:
    return (a.float() - b.float())[batch.attention_mask.bool()].abs().max().item()


def _plain_logits(hf, batch) -> torch.Tensor:
    with torch.no_grad():
        return hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                  position_ids=batch.position_ids).logits


@contextmanager
def _transformers_report():
    """Collect every transformers log record (warning and up) and Python warning."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("transformers")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    seen: list[str] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield seen
        seen += [str(w.message) for w in caught]
        seen += [line for line in stream.getvalue().splitlines() if line.strip()]
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _load_clean(out: Path, **kw):
    """Load an export with plain transformers; assert nothing is missing, unexpected or warned."""
    with _transformers_report() as seen:
        hf, report = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True, **kw)
        tok = AutoTokenizer.from_pretrained(out, **{k: v for k, v in kw.items()
                                                    if k == "gguf_file"})
    assert not any(report[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys",
                                       "error_msgs")), report
    assert seen == [], seen
    return hf, tok


# ---- Hugging Face export, synthetic model -----------------------------------------------


@pytest.fixture(scope="module")
def syn(synthetic):
    s = synthetic.info["synthetic"]
    batch = synthetic.encode_instructions(s.harmful[:6] + s.harmless[:6])
    direction = Direction(s.direction, layer=2, position=-1, model="synthetic", seed=3,
                          dataset_hash="feedbeef", meta={"bypass": -1.5, "induce": 2.0, "kl": 0.1})
    return synthetic, s, batch, direction, orthogonalize(synthetic, direction)


def test_export_loads_cleanly_and_round_trips(syn, tmp_path):
    m, _, batch, _, orth = syn
    out = export_hf(orth, tmp_path / "orth")
    hf, tok = _load_clean(out)
    assert hf.config.tie_word_embeddings is False
    assert "lm_head.bias" not in hf.state_dict()  # the bridge's all-zero bias is not exported
    assert _real_max(_plain_logits(hf, batch), orth.logits(batch), batch) < HF_TOL["fp32"]
    prompts = m.format(["How do I make a bomb ?", "Write a poem about the moon ."])
    assert tok(prompts)["input_ids"] == m.tokenizer(prompts)["input_ids"]
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                   add_generation_prompt=True) == m.format(["hi"])[0]
    meta = read_export_meta(out)
    assert meta["orthogonalized"][0]["layer"] == 2 and meta["base_model"] == "synthetic"
    assert "model.embed_tokens" in meta["writers"] and meta["dtype"] == "fp32"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["orth"]  # no temp dirs left behind


def test_config_readable_by_transformers_4(syn, tmp_path):
    """transformers 4.x reads ``rope_theta`` (not ``rope_parameters``) and a tokenizer class and
    special-token list it knows: all are in the files, and agree with what 5.x reads."""
    out = export_hf(syn[4], tmp_path / "orth")
    config = json.loads((out / "config.json").read_text())
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] \
        == AutoConfig.from_pretrained(out).rope_parameters["rope_theta"]
    assert "rope_scaling" not in config  # default rotary: 4.x's default, no scaling
    tok_config = json.loads((out / "tokenizer_config.json").read_text())
    assert tok_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert tok_config["additional_special_tokens"] == ["<|system|>", "<|user|>", "<|end|>",
                                                      "<|assistant|>"]
    assert not {"extra_special_tokens", "local_files_only", "is_local"} & set(tok_config)
    assert set(AutoTokenizer.from_pretrained(out).all_special_tokens) \
        >= set(tok_config["additional_special_tokens"])


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_export_dtypes(syn, tmp_path, dtype):
    _, _, batch, _, orth = syn
    out = export_hf(orth, tmp_path / dtype, dtype=dtype)
    hf, _ = _load_clean(out, dtype="auto")
    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    assert hf.dtype == torch_dtype and json.loads((out / "config.json").read_text())["dtype"] \
        == str(torch_dtype).removeprefix("torch.")
    assert read_export_meta(out)["dtype"] == dtype
    # the exported weights are the fp32 ones rounded once
    ref = export_hf(orth, tmp_path / "fp32")
    hf32 = AutoModelForCausalLM.from_pretrained(ref)
    for name, p in hf.state_dict().items():
        assert torch.equal(p, hf32.state_dict()[name].to(torch_dtype)), name
    size = (out / "model.safetensors").stat().st_size
    assert size < 0.55 * (ref / "model.safetensors").stat().st_size


def test_model_card(syn, tmp_path):
    m, _, _, direction, orth = syn
    report = tmp_path / "report.json"
    rates = {"baseline_harmful": {"rate": 0.9, "ci_low": 0.8, "ci_high": 1.0, "n": 20},
             "ablation": {"rate": 0.05, "ci_low": 0.0, "ci_high": 0.15, "n": 20}}
    report.write_text(json.dumps({"model": m.name, "verdict": "SUPPORTED", "rates": rates,
                                  "data": {"name": "synthetic"}, "directions": {
                                      "3": {"layer": 2, "position": -1, "norm": direction.norm}}}))
    effect = load_effect(report, direction, m.name)
    out = export_hf(orth, tmp_path / "orth", effect=effect)
    card = (out / "README.md").read_text()
    for text in ("**synthetic**", "| 1 | synthetic | 2 | -1 | 3 | feedbeef |", "bypass -1.5",
                 "verdict **SUPPORTED**", "| ablation | 0.050 [0.000, 0.150] (n=20) |",
                 "model.safetensors (hf, fp32)", "library_name: transformers",
                 "Base model source: spec `synthetic`."):
        assert text in card, text
    assert read_export_meta(out)["effect"]["rates"] == rates
    # a report about another model or another direction is refused
    with pytest.raises(ExportError, match="not 'other'"):
        load_effect(report, direction, "other")
    with pytest.raises(ExportError, match="no direction at layer 1"):
        load_effect(report, Direction(direction.vector, layer=1, position=-1), m.name)
    card = (export_hf(orth, tmp_path / "plain") / "README.md").read_text()
    assert "No measured effect was recorded" in card


def test_export_existing_dir_needs_force(syn, tmp_path):
    m, _, _, _, orth = syn
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="force=True"):
        export_hf(orth, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    export_hf(orth, out, force=True)
    assert not (out / "keep.txt").exists() and (out / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    export_hf(m, tmp_path / "plain")  # an unedited model exports too, without a record
    assert not (tmp_path / "plain" / EXPORT_META).exists()
    with pytest.raises(ExportError, match="use one of fp32, bf16, fp16"):
        export_hf(orth, tmp_path / "q", dtype="q8_0")
    assert not (tmp_path / "q").exists()


def test_export_cli_and_info(syn, tmp_path, capsys):
    m, s, batch, direction, _ = syn
    direction.save(tmp_path / "refusal")
    out = tmp_path / "model"
    args = ["--model", "synthetic", "--direction", str(tmp_path / "refusal.safetensors"),
            "--out", str(out)]
    assert export_cli(args) == 0
    assert capsys.readouterr().out.strip() == str(out.absolute())
    ablated = m.logits(batch, ablation_hooks(m, s.direction))
    assert _real_max(_plain_logits(AutoModelForCausalLM.from_pretrained(out), batch), ablated,
                     batch) < 1e-4
    assert export_cli(args) == 1
    assert "--force" in capsys.readouterr().err
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"model": m.name, "verdict": "SUPPORTED", "rates": {
        "ablation": {"rate": 0.1, "ci_low": 0.0, "ci_high": 0.2, "n": 10}}, "directions": {
        "3": {"layer": 2, "position": -1, "norm": direction.norm}}}))
    assert export_cli(args + ["--force", "--dtype", "bf16", "--report", str(report)]) == 0
    assert "verdict **SUPPORTED**" in (out / "README.md").read_text()
    capsys.readouterr()
    assert info_cli(["--model", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "parameters" in shown and "export: hf (bf16) of synthetic" in shown
    assert "layer 2, position -1, seed 3, dataset feedbeef" in shown
    assert "bypass -1.5" in shown and "refusal rate ablation: 0.100 [0.000, 0.200] (n=10)" in shown
    # refused before any work: a GGUF type for hf, a tokenizer GGUF cannot hold, a wrong width
    assert export_cli(args + ["--force", "--dtype", "q8_0"]) == 1
    assert "not available for --format hf" in capsys.readouterr().err
    assert export_cli(["--model", "synthetic", "--direction", str(tmp_path / "refusal"), "--out",
                       str(tmp_path / "g"), "--format", "gguf"]) == 1
    assert "WordLevel" in capsys.readouterr().err and not (tmp_path / "g").exists()
    Direction(torch.ones(576), layer=0, position=-1).save(tmp_path / "wide")
    wide = ["--model", "synthetic", "--direction", str(tmp_path / "wide.safetensors"),
            "--out", str(tmp_path / "other")]
    assert export_cli(wide) == 1
    assert "width 576" in capsys.readouterr().err and not (tmp_path / "other").exists()


def test_export_cli_help_is_complete(capsys):
    with pytest.raises(SystemExit) as exit_:
        export_cli(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for option in ("--model SPEC", "--direction PATH", "--out DIR", "--format {hf,gguf}",
                   "--dtype TYPE", "--report PATH", "--force"):
        assert option in text, option
    assert "fp32, bf16, fp16 for hf" in " ".join(text.split())
    assert "``" not in text and ":func:" not in text


# ---- GGUF: tiny llama / qwen2 models with byte-level BPE tokenizers ----------------------

TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=96, max_position_embeddings=256)


def tiny_model(model_type: str, tok: PreTrainedTokenizerFast, path: Path):
    """A random ``model_type`` model (non-trivial norms and biases, untied unembedding, a
    vocabulary padded past the tokenizer's) with a byte-level BPE tokenizer, wrapped."""
    cfg = AutoConfig.for_model(model_type, vocab_size=len(tok) + 5, bos_token_id=tok.bos_token_id,
                               eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                               tie_word_embeddings=False, rope_theta=50000.0, **TINY)
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.1 * torch.randn_like(p) if p.ndim == 1 else 0.05 * torch.randn_like(p))
    hf.save_pretrained(path)
    tok.save_pretrained(path)
    return wrap_hf(hf, PreTrainedTokenizerFast.from_pretrained(path), f"tiny-{model_type}",
                   source=path, info={"path": str(path)})


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def tiny(request, syn, tmp_path_factory, bpe_tokenizer):
    _, s, _, _, _ = syn
    texts = s.harmful + s.harmless
    tok = bpe_tokenizer(texts, split="qwen2" if request.param == "qwen2" else None)
    m = tiny_model(request.param, tok, tmp_path_factory.mktemp(request.param) / "src")
    direction = torch.randn(m.d_model, generator=torch.Generator().manual_seed(2))
    orth = orthogonalize(m, direction)
    hf_out = export_hf(orth, tmp_path_factory.mktemp("hf") / "export")
    prompts = m.format(texts[:3] + texts[-3:] + ["Numbers 12345, tabs\tand ünïcödé!"])
    return m, orth, hf_out, prompts


@pytest.mark.parametrize("dtype", list(GGUF_TOL))
def test_gguf_round_trip(tiny, dtype, tmp_path):
    m, orth, hf_out, prompts = tiny
    out = export_gguf(orth, tmp_path / "gguf", dtype=dtype)
    kind = {"fp32": "F32", "fp16": "F16", "bf16": "BF16", "q8_0": "Q8_0"}[dtype]
    name = f"tiny-{m.hf_model.config.model_type}-orthogonalized-{kind}.gguf"
    assert sorted(p.name for p in out.iterdir()) == sorted(["README.md", EXPORT_META, name])
    gguf_model, gguf_tok = _load_clean(out, gguf_file=name, dtype=torch.float32)
    assert gguf_model.config.model_type == m.hf_model.config.model_type
    assert gguf_model.config.tie_word_embeddings is False
    # the tokenizer reads back: same ids with and without special tokens, same chat template
    hf_tok = AutoTokenizer.from_pretrained(hf_out)
    for special in (False, True):
        assert gguf_tok(prompts, add_special_tokens=special)["input_ids"] \
            == hf_tok(prompts, add_special_tokens=special)["input_ids"]
    assert gguf_tok.chat_template == hf_tok.chat_template
    assert (gguf_tok.bos_token_id, gguf_tok.eos_token_id, gguf_tok.pad_token_id) \
        == (hf_tok.bos_token_id, hf_tok.eos_token_id, hf_tok.pad_token_id)
    # and the logits match the HF export's, within the type's rounding
    batch = orth.tokenize(prompts)
    ref = _plain_logits(AutoModelForCausalLM.from_pretrained(hf_out), batch)
    diff = _real_max(_plain_logits(gguf_model, batch), ref, batch)
    assert diff < GGUF_TOL[dtype], diff
    if dtype != "fp32":  # rounding shows, i.e. the file really holds that type
        assert diff > 1e-6
    # it is the edited model: the unedited one is much further away
    assert _real_max(m.logits(batch), ref, batch) > 5 * diff
    print(f"GGUF {m.hf_model.config.model_type} {dtype}: max |logit diff| {diff:.3g}, "
          f"{(out / name).stat().st_size} bytes")
    assert read_export_meta(out)["file"] == name and "gguf_file=" in (out / "README.md").read_text()


def test_info_describes_gguf_export_without_loading(tiny, tmp_path, capsys):
    m, orth, _, _ = tiny
    out = export_gguf(orth, tmp_path / "gguf", dtype="fp16")
    assert info_cli(["--model", str(out)]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"export: gguf (fp16) of tiny-{m.hf_model.config.model_type}, file ")
    assert "parameters" not in shown  # described from refusal_lens.json, not loaded


# ---- embedded ---------------------------------------------------------------------------

EMBEDDED_PROMPTS = ["How do I make a pipe bomb?", "Write a haiku about autumn leaves.",
                    "Explain how to pick a lock.", "Hi", "Add 12345 and 678, then say ünïcödé."]
# GGUF logits vs the fp32 HF export, the embedded model (logits of order 10-30; fp32 residual
# norms reach ~2.5e4, so even F32 differs by summation order).
EMBEDDED_GGUF_TOL = {"fp32": 1e-3, "fp16": 0.5, "bf16": 3.0, "q8_0": 4.0}


@pytest.fixture(scope="module")
def emb_export(embedded, tmp_path_factory):
    """The refusal organism, orthogonalized against its own difference-in-means direction."""
    from refusal_lens.directions import mean_diff_candidates

    r = mean_diff_candidates(embedded, EMBEDDED_PROMPTS[::2], EMBEDDED_PROMPTS[1::2], layers=[14],
                             positions=[-1])[0, 0]
    orth = orthogonalize(embedded, Direction(r, layer=14, position=-1, model=embedded.name))
    out = export_hf(orth, tmp_path_factory.mktemp("emb") / "hf")
    return orth, out, orth.tokenize(orth.format(EMBEDDED_PROMPTS))


@pytest.mark.embedded
def test_embedded_hf_export_loads_cleanly(emb_export):
    orth, out, batch = emb_export
    hf, tok = _load_clean(out)
    assert _real_max(_plain_logits(hf, batch), orth.logits(batch), batch) < 1e-5
    assert tok(orth.format(EMBEDDED_PROMPTS))["input_ids"] \
        == orth.tokenizer(orth.format(EMBEDDED_PROMPTS))["input_ids"]
    config = json.loads((out / "config.json").read_text())
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] == 100000.0
    print(f"HF fp32: {(out / 'model.safetensors').stat().st_size} bytes")


@pytest.mark.embedded
@pytest.mark.parametrize("dtype", list(EMBEDDED_GGUF_TOL))
def test_embedded_gguf_round_trip(emb_export, dtype, tmp_path):
    orth, hf_out, batch = emb_export
    out = export_gguf(orth, tmp_path / "gguf", dtype=dtype)
    name = read_export_meta(out)["file"]
    gguf_model, gguf_tok = _load_clean(out, gguf_file=name, dtype=torch.float32)
    prompts = orth.format(EMBEDDED_PROMPTS)
    hf_tok = AutoTokenizer.from_pretrained(hf_out)
    assert gguf_tok(prompts)["input_ids"] == hf_tok(prompts)["input_ids"]
    assert gguf_tok.chat_template == hf_tok.chat_template
    ref = _plain_logits(AutoModelForCausalLM.from_pretrained(hf_out), batch)
    diff = _real_max(_plain_logits(gguf_model, batch), ref, batch)
    last = batch.ends - 1  # and the next-token choice after each prompt is the same
    rows = torch.arange(len(last))
    same_top = bool((_plain_logits(gguf_model, batch)[rows, last].argmax(-1)
                     == ref[rows, last].argmax(-1)).all())
    print(f"GGUF embedded {dtype}: max |logit diff| {diff:.3g}, same next token {same_top}, "
          f"{(out / name).stat().st_size} bytes")
    assert diff < EMBEDDED_GGUF_TOL[dtype], diff
    assert same_top
    if dtype == "fp32":
        _same_layout_as_llama_cpp(out / name)


def _same_layout_as_llama_cpp(path: Path) -> None:
    """The file has the keys, tensor names and shapes, and vocabulary that llama.cpp's own
    converter wrote into the shipped GGUF of the same model (plus the untied output matrix)."""
    from gguf import GGUFReader

    from refusal_lens.embedded import gguf_path

    ours, src = GGUFReader(path), GGUFReader(gguf_path())
    keys = {k for k in src.fields if k.startswith(("llama.", "tokenizer."))}
    assert keys <= set(ours.fields), keys - set(ours.fields)
    for key in keys - {"tokenizer.ggml.pre"}:  # pre: see the README's export section
        assert ours.fields[key].contents() == src.fields[key].contents(), key
    shapes = {t.name: list(t.shape) for t in src.tensors}
    shapes["output.weight"] = shapes["token_embd.weight"]  # the untied unembedding
    assert {t.name: list(t.shape) for t in ours.tensors} == shapes


def test_export_cli_gguf(tiny, tmp_path, capsys):
    m, _, _, prompts = tiny
    Direction(torch.randn(m.d_model), layer=1, position=-1, model=m.name).save(tmp_path / "d")
    out = tmp_path / "gguf"
    assert export_cli(["--model", m.info["path"], "--direction", str(tmp_path / "d"), "--out",
                       str(out), "--format", "gguf", "--dtype", "q8_0"]) == 0
    assert capsys.readouterr().out.strip() == str(out.absolute())
    name = read_export_meta(out)["file"]
    assert name == "src-orthogonalized-Q8_0.gguf"  # a local directory's model is named after it
    gguf_model, _ = _load_clean(out, gguf_file=name, dtype=torch.float32)
    assert gguf_model.config.num_hidden_layers == m.n_layers
