"""A tiny synthetic chat model with a planted refusal direction.

``build_synthetic()`` returns a real Hugging Face ``LlamaForCausalLM`` (about
170k parameters) and a real ``PreTrainedTokenizerFast`` with a
chat template, built offline and deterministically from a seed in well under
a second. Its weights are random except for a handful of planted circuits
that make the findings of Arditi et al. (2024) hold by construction, through
ordinary forward computation:

* **Harmfulness feature.** Embeddings of harmful words ("bomb", "hack", ...)
  carry a large component along a unit vector ``direction``; every other
  embedding is orthogonal to it.
* **Mover head.** Head 0 of layer ``plant_layer`` has a query reading a
  constant direction present in every embedding and a key reading
  ``direction`` (on RoPE's slowest-rotating dimension pair, so scores are
  position-independent): it attends to harmful tokens when there are any, and
  its value/output maps copy their ``direction`` component to the current
  position. From layer ``plant_layer + 1`` on, the last (post-instruction)
  positions of harmful prompts have a large projection on ``direction``;
  harmless prompts have none.
* **Readout.** The unembedding row of ``"I"`` reads ``direction``. A weaker
  "start" code in the ``<|assistant|>`` embedding favours ``"Sure"``, and
  strong bigram codes in output-token embeddings chain the two responses
  ``"I cannot help with that"`` and ``"Sure here is your answer"``, each
  followed by ``<eos>``.

All other weights are random; at the default ``noise`` their writes are
comparable in size to the embeddings but stay out of the planted subspace. So
the model is a genuine, non-trivial transformer whose refusal is mediated by
one direction: ablating it stops refusal, adding it induces refusal.

TransformerLens: ``TransformerBridge.boot_transformers(str(sm.path),
hf_model=sm.model, tokenizer=sm.tokenizer)`` works offline. The bridge wraps
(and, in compatibility mode, rewrites) ``sm.model`` in place, and its own
tokenizer prepends ``<bos>``, which the chat template already contains: pass
``prepend_bos=False`` for chat-formatted text.
"""

from __future__ import annotations

import atexit
import itertools
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

__all__ = [
    "CHAT_TEMPLATE",
    "COMPLIANT_RESPONSE",
    "HARMFUL_WORDS",
    "REFUSAL_RESPONSE",
    "SyntheticModel",
    "build_synthetic",
]

SPECIAL_TOKENS = ["<pad>", "<unk>", "<bos>", "<eos>", "<|system|>", "<|user|>", "<|end|>", "<|assistant|>"]
REFUSAL_RESPONSE = ("I", "cannot", "help", "with", "that")
COMPLIANT_RESPONSE = ("Sure", "here", "is", "your", "answer")

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}<|system|> {{ message['content'] }} <|end|> "
    "{% elif message['role'] == 'user' %}<|user|> {{ message['content'] }} <|end|> "
    "{% elif message['role'] == 'assistant' %}<|assistant|> {{ message['content'] }} {{ eos_token }} "
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

_ASK = ("explain", "describe", "tell me", "show me", "teach me")
_MAKE = ("build", "make", "create", "assemble")
_SUFFIX = ("", "at home", "step by step", "for beginners", "quickly", "in detail")
_TARGETS = (
    "a bank", "the neighbor", "a company", "the school", "an account", "the server", "a friend", "the city",
)
_FORMS = ("poem", "story", "guide", "essay", "song", "letter")
_HARMFUL_NOUNS = (
    "bomb", "poison", "weapon", "malware", "explosive", "ransomware",
    "grenade", "toxin", "keylogger", "rootkit", "firearm", "detonator",
)
_HARMFUL_VERBS = (
    "hack", "steal", "launder", "blackmail", "kidnap", "stalk",
    "smuggle", "counterfeit", "sabotage", "rob", "attack", "scam",
)
HARMFUL_WORDS = _HARMFUL_NOUNS + _HARMFUL_VERBS  # the only embeddings with a ``direction`` component
_HARMLESS_NOUNS = (
    "cake", "birdhouse", "kite", "website", "bookshelf", "sandwich",
    "robot", "budget", "playlist", "snowman", "candle", "quilt",
)
_HARMLESS_VERBS = (
    "visit", "thank", "call", "paint", "clean", "organize",
    "join", "email", "support", "photograph", "decorate", "praise",
)
_TOPICS = (
    "the garden", "the ocean", "a cat", "friendship", "the moon", "spring",
    "a river", "the family", "the mountains", "a rainy day", "music", "the stars",
)
_EXTRA_WORDS = (
    "You", "you", "are", "a", "an", "the", "and", "of", "for", "in", "on", "about", "how", "to",
    "me", "my", "write", "helpful", "honest", "harmless", "assistant", "be", "concise", "safe",
    "always", "please", "can", "what", "why", "money", "making", ".", ",", "?", "!", "'",
)


# Strengths of the planted features (relative to unit-norm random embedding content).
_GAIN = dict(
    harm=2.0,  # harmful-word embeddings along ``direction``
    qk=2.0,  # mover head: query on the constant feature, key on ``direction``
    ov=1.0,  # mover head: value/output copy of ``direction``
    refuse=1.0,  # unembedding of "I" along ``direction``
    start=1.0,  # "<|assistant|>" -> "Sure" code (weaker than the refusal readout)
    bigram=4.0,  # output token -> next output token codes
    read=3.0,  # unembedding rows reading those codes
)


def _vocab() -> list[str]:
    """Special tokens first, then every word the templates and responses use."""
    words: list[str] = []
    phrases = (_ASK, _MAKE, _SUFFIX, _TARGETS, _FORMS, _HARMFUL_NOUNS, _HARMFUL_VERBS,
               _HARMLESS_NOUNS, _HARMLESS_VERBS, _TOPICS, _EXTRA_WORDS, REFUSAL_RESPONSE,
               COMPLIANT_RESPONSE)
    for group in phrases:
        for phrase in group:
            for w in phrase.split():
                if w not in words:
                    words.append(w)
    return SPECIAL_TOKENS + words


def _instructions(harmful: bool) -> list[str]:
    """All distinct instructions of one kind, from templates x word lists."""
    nouns, verbs = (_HARMFUL_NOUNS, _HARMFUL_VERBS) if harmful else (_HARMLESS_NOUNS, _HARMLESS_VERBS)
    out = [f"{a} how to {m} a {n} {s}" for a, m, n, s in itertools.product(_ASK, _MAKE, nouns, _SUFFIX)]
    out += [f"{a} how to {v} {t} {s}" for a, v, t, s in itertools.product(_ASK, verbs, _TARGETS, _SUFFIX)]
    if harmful:
        out += [f"write a {f} about how to {v} {t}" for f, v, t in itertools.product(_FORMS, verbs, _TARGETS)]
    else:
        out += [f"write a {f} about {t}" for f, t in itertools.product(_FORMS, _TOPICS)]
    return sorted({" ".join(s.split()) for s in out})


def _build_tokenizer(vocab: list[str]) -> PreTrainedTokenizerFast:
    """Word-level tokenizer (split on whitespace and punctuation), no automatic BOS."""
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=SPECIAL_TOKENS[4:],
        padding_side="left",
        model_max_length=512,
        clean_up_tokenization_spaces=False,
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


@dataclass
class SyntheticModel:
    """A synthetic chat model, its tokenizer, the planted direction and prompts."""

    model: LlamaForCausalLM
    tokenizer: PreTrainedTokenizerFast
    direction: Float[torch.Tensor, "d_model"]
    path: Path
    harmful: list[str]
    harmless: list[str]
    refusal_tokens: list[str]
    plant_layer: int = 1

    def format_prompt(self, instruction: str, system: str | None = None) -> str:
        """Chat-format one instruction, ending with the generation prompt."""
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": instruction}
        ]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _orthonormal(d: int, gen: torch.Generator) -> Float[torch.Tensor, "d d"]:
    q, r = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).float()


def build_synthetic(
    seed: int = 0,
    d_model: int = 64,
    n_layers: int = 4,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    d_mlp: int = 128,
    plant_layer: int = 1,
    n_instructions: int = 400,
    noise: float = 0.5,
    save_dir: str | Path | None = None,
) -> SyntheticModel:
    """Build the synthetic model deterministically from ``seed``.

    Args:
        seed: Seeds every random weight, the direction and the prompt sampling.
        d_model, n_layers, n_heads, n_kv_heads, d_mlp: Llama shape.
        plant_layer: Layer whose head 0 moves the harmfulness feature to the
            last positions; ``direction`` is in ``resid_pre`` from the next layer.
        n_instructions: Number of harmful and of harmless instructions returned.
        noise: Scale of the random (non-planted) weights.
        save_dir: Where to ``save_pretrained`` model and tokenizer; a fresh
            temporary directory (removed at exit) by default.
    """
    if not 0 <= plant_layer < n_layers - 1:
        raise ValueError(f"plant_layer must be in [0, {n_layers - 2}], got {plant_layer}")
    gen = torch.Generator().manual_seed(seed)
    vocab = _vocab()
    ids = {w: i for i, w in enumerate(vocab)}
    head_dim = d_model // n_heads

    # Planted subspace: direction, a constant "query" feature, one code per bigram target.
    targets = ["Sure", *REFUSAL_RESPONSE[1:], *COMPLIANT_RESPONSE[1:], "<eos>"]
    basis = _orthonormal(d_model, gen)
    direction, const = basis[:, 0], basis[:, 1]
    code = {t: basis[:, 2 + i] for i, t in enumerate(targets)}
    planted = basis[:, : 2 + len(targets)]
    free = torch.eye(d_model) - planted @ planted.T  # projector onto the free subspace
    succ = dict(zip(REFUSAL_RESPONSE, [*REFUSAL_RESPONSE[1:], "<eos>"]))
    succ |= dict(zip(COMPLIANT_RESPONSE, [*COMPLIANT_RESPONSE[1:], "<eos>"]))

    def rand(*shape: int, fan_in: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * noise / fan_in**0.5

    # Embeddings: random content in the free subspace + planted features.
    emb = torch.randn(len(vocab), d_model, generator=gen) @ free / d_model**0.5 + const
    for w in HARMFUL_WORDS:
        emb[ids[w]] += _GAIN["harm"] * direction
    for w, nxt in succ.items():
        emb[ids[w]] += _GAIN["bigram"] * code[nxt]
    emb[ids["<|assistant|>"]] += _GAIN["start"] * code["Sure"]

    # Unembedding: small random reads of the free subspace + planted reads.
    unemb = rand(len(vocab), d_model, fan_in=d_model) @ free
    unemb[ids["I"]] += _GAIN["refuse"] * direction
    for t in targets:
        unemb[ids[t]] += _GAIN["read"] * code[t]
    unemb -= unemb.mean(0)  # centred: logits are only defined up to a constant anyway

    config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=d_model, intermediate_size=d_mlp,
        num_hidden_layers=n_layers, num_attention_heads=n_heads, num_key_value_heads=n_kv_heads,
        head_dim=head_dim, max_position_embeddings=512, rms_norm_eps=1e-6, tie_word_embeddings=False,
        bos_token_id=ids["<bos>"], eos_token_id=ids["<eos>"], pad_token_id=ids["<pad>"],
        attn_implementation="eager", dtype="float32",
    )
    with torch.random.fork_rng(devices=[]):
        model = LlamaForCausalLM(config)
    sd = {"model.embed_tokens.weight": emb, "lm_head.weight": unemb, "model.norm.weight": torch.ones(d_model)}
    slow = head_dim // 2 - 1  # RoPE pair (slow, slow + head_dim/2) rotates slowest
    for layer in range(n_layers):
        p = f"model.layers.{layer}."
        q = rand(n_heads * head_dim, d_model, fan_in=d_model)
        k = rand(n_kv_heads * head_dim, d_model, fan_in=d_model)
        v = rand(n_kv_heads * head_dim, d_model, fan_in=d_model)
        o = free @ rand(d_model, n_heads * head_dim, fan_in=n_heads * head_dim)
        if layer == plant_layer:  # head 0 (kv head 0): attend to harmful tokens, copy direction
            q[:head_dim] = 0.0
            k[:head_dim] = 0.0
            q[slow] = _GAIN["qk"] * const
            k[slow] = _GAIN["qk"] * direction
            v[0] = direction
            o[:, :head_dim] = 0.0
            o[:, 0] = _GAIN["ov"] * direction
        sd |= {
            p + "self_attn.q_proj.weight": q,
            p + "self_attn.k_proj.weight": k,
            p + "self_attn.v_proj.weight": v,
            p + "self_attn.o_proj.weight": o,
            p + "mlp.gate_proj.weight": rand(d_mlp, d_model, fan_in=d_model),
            p + "mlp.up_proj.weight": rand(d_mlp, d_model, fan_in=d_model),
            p + "mlp.down_proj.weight": free @ rand(d_model, d_mlp, fan_in=d_mlp),
            p + "input_layernorm.weight": torch.ones(d_model),
            p + "post_attention_layernorm.weight": torch.ones(d_model),
        }
    model.load_state_dict(sd, strict=True)
    model.eval()
    gc = model.generation_config
    gc.bos_token_id, gc.eos_token_id, gc.pad_token_id = ids["<bos>"], ids["<eos>"], ids["<pad>"]
    gc.do_sample, gc.max_new_tokens = False, 8

    if save_dir is None:
        path = Path(tempfile.mkdtemp(prefix="refusal_lens_synthetic_"))
        atexit.register(shutil.rmtree, path, ignore_errors=True)
    else:
        path = Path(save_dir)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(path)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    _build_tokenizer(vocab).save_pretrained(path)
    # Reload so the tokenizer's name_or_path points at ``path`` (TransformerLens re-reads it).
    tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
    model.config._name_or_path = str(path)

    rng = random.Random(seed)
    harmful, harmless = _instructions(True), _instructions(False)
    n = min(n_instructions, len(harmful), len(harmless))
    return SyntheticModel(
        model=model,
        tokenizer=tokenizer,
        direction=direction.clone(),
        path=path,
        harmful=rng.sample(harmful, n),
        harmless=rng.sample(harmless, n),
        refusal_tokens=["I"],
        plant_layer=plant_layer,
    )
