"""Every forward pass of the library: logits, activations and greedy decoding under interventions.

An intervention is a value, :class:`Intervention` (ablate, ablate_grouped, add, read), that
renders itself as TransformerLens hooks (:meth:`Intervention.hooks`). The functions here take
``interventions=`` (such values) and ``fwd_hooks=`` (any TransformerLens ``(name, fn)`` hooks)
and run the model on one of two backends, chosen by one rule (:func:`choose_backend`):

* ``"plain"``: the Hugging Face modules under the bridge, with its wrappers temporarily taken
  out (same weights, no copy; :mod:`refusal_lens.hf_modules`), each intervention applied as a
  PyTorch hook on the module whose input or output is its hook point. A token prefix shared by
  a whole batch (the system turn) runs once and is reused through the KV cache, and decoding
  may use a fused attention kernel (``attn="sdpa"``). Chosen when every intervention is an
  :class:`Intervention` whose hook points (and every point :func:`collect` reads) are residual
  points (``hook_resid_pre/mid/post``), no ``fwd_hooks`` are given, and no hook is live on the
  bridge other than those of :func:`intervening` blocks (whose values it applies itself).
* ``"bridge"``: the TransformerLens bridge, in every other case, or when the caller passes
  ``backend="bridge"``. ``backend="plain"`` demands the plain path (an error says why not).

The float difference between them: with the model's own attention and no shared prefix the
plain path's logits and activations equal the bridge's bit for bit. A shared prefix changes
the order of float operations (logits within 1e-5 absolute on the synthetic model), and
decoding with ``attn="sdpa"`` another kernel (about 1e-4 on the embedded model's logits, the
same greedy text); tested in ``tests/test_execution.py``.
"""

from __future__ import annotations

import math
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Literal, Sequence

import torch
from jaxtyping import Float
from torch import Tensor, nn

from .errors import InputError, InputTypeError, NonFiniteError
from .hf_modules import (bridges_removed, greedy_decode, in_shared_prefix, module_hook,
                         prefix_cache, project, reference_decode, residual_modules, split_prefix,
                         usable_prefix)
from .placement import execution_device

if TYPE_CHECKING:
    from .model import Batch, LensModel

__all__ = ["Intervention", "HookList", "ActivationError", "intervening", "choose_backend",
           "running", "forward", "last_logits", "Capture", "collect", "decode", "layer_device"]

HookList = list[tuple[str, Callable]]


class ActivationError(NonFiniteError):
    """Activations or logits that cannot be used (NaN / inf)."""
OPS = ("ablate", "ablate_grouped", "add", "read")


def layer_device(model: "LensModel", layer: int) -> torch.device:
    """The device decoder layer ``layer`` computes on (see
    :func:`refusal_lens.placement.execution_device`)."""
    if not 0 <= layer < model.n_layers:
        raise InputError(f"Layer {layer!r} is out of range: {model.name} has layers "
                         f"0..{model.n_layers - 1}.")
    return execution_device(model.bridge.blocks[layer])


@dataclass(frozen=True, eq=False)
class Intervention:
    """What to do to the residual stream, as a value.

    ``op``: ``"ablate"`` (``x - strength (x.u)u`` with ``vectors`` the unit ``u``),
    ``"ablate_grouped"`` (``vectors`` ``(k, d_model)`` units, one per group of rows: the batch
    is ``k`` copies of the same prompts, laid out by :func:`forward`), ``"add"``
    (``x + coeff * r``, ``vectors`` the raw ``r``) or ``"read"`` (``reader(name, x)`` sees the
    activation and changes nothing). Hook names are ``blocks.{l}.{point}`` for ``l`` in
    ``layers``; with no ``layers``, ``points`` are full hook names. Build them with
    :func:`refusal_lens.interventions.ablation` / ``addition``, which check them against a model.
    """

    op: Literal["ablate", "ablate_grouped", "add", "read"]
    vectors: Float[Tensor, "*k d_model"] | None
    layers: tuple[int, ...]
    points: tuple[str, ...]
    coeff: float = 1.0
    strength: float = 1.0
    reader: Callable[[str, Tensor], None] | None = None

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise InputError(f"op must be one of {OPS}, got {self.op!r}.")
        if (self.op == "read") != (self.vectors is None) or (self.op == "read") != callable(
                self.reader):
            raise InputTypeError("op 'read' takes a callable reader and no vectors; the "
                                 "others take vectors and no reader.")
        want = 2 if self.op == "ablate_grouped" else 1
        if self.vectors is not None and self.vectors.dim() != want:
            raise InputError(f"op {self.op!r} takes a {want}-D vectors tensor, got shape "
                             f"{tuple(self.vectors.shape)}.")
        if not self.points or isinstance(self.points, str):
            raise InputError(f"points must be a non-empty tuple of hook points, got "
                             f"{self.points!r}.")
        if not (math.isfinite(self.coeff) and math.isfinite(self.strength) and self.strength >= 0):
            raise InputError(f"coeff must be finite and strength finite and >= 0, got "
                             f"{self.coeff!r}, {self.strength!r}.")

    @property
    def groups(self) -> int:
        """How many copies of the batch the intervention needs (``k`` for grouped ablation)."""
        return int(self.vectors.shape[0]) if self.op == "ablate_grouped" else 1

    def names(self, model: "LensModel") -> list[tuple[int | None, str]]:
        """``(layer, hook name)`` of every hook point that exists in ``model`` (parallel
        attention/MLP blocks have no ``resid_mid``: absent points are skipped)."""
        if not self.layers:
            return [(None, p) for p in self.points]
        out = [(l, f"blocks.{l}.{p}") for l in self.layers for p in self.points]
        out = [(l, n) for l, n in out if n in model.bridge.hook_dict]
        if not out:
            raise InputError(f"None of the hook points {list(self.points)} exists in "
                             f"{model.name}; use residual points such as hook_resid_pre.")
        return out

    def placed(self, model: "LensModel") -> dict[int, Tensor]:
        """The tensor each layer's hook applies (``sqrt(strength) u`` or ``coeff r``), in the
        model's dtype on the layer's device: one copy per device, shared by its layers, made
        here so no hook copies a vector while the model runs."""
        if self.vectors is None:
            return {}
        if self.vectors.shape[-1] != model.d_model:
            raise InputError(f"The intervention's vectors have width {self.vectors.shape[-1]} "
                             f"but {model.name} has d_model {model.d_model}.")
        v = self.vectors
        if self.op == "add":
            v = self.coeff * v
        elif self.strength != 1.0:
            v = v * math.sqrt(self.strength)
        copies: dict[torch.device, Tensor] = {}
        for dev in {layer_device(model, l) for l in self.layers}:
            copies[dev] = v.detach().to(device=dev, dtype=model.dtype)
        return {l: copies[layer_device(model, l)] for l in self.layers}

    def functions(self, model: "LensModel") -> list[tuple[str, Callable[[Tensor], Tensor]]]:
        """``(hook name, x -> x')`` pairs: what the intervention does at each point."""
        names = self.names(model)
        if self.op == "read":
            def read(x: Tensor, name: str) -> Tensor:
                if not in_shared_prefix():  # a shared prefix's activations belong to no row
                    self.reader(name, x)
                return x
            return [(n, lambda x, n=n: read(x, n)) for _, n in names]
        fns = {l: (lambda x, v=v: x + v) if self.op == "add" else (lambda x, v=v: project(x, v))
               for l, v in self.placed(model).items()}
        return [(n, fns[l]) for l, n in names]

    def hooks(self, model: "LensModel") -> HookList:
        """TransformerLens hooks ``(name, fn(act, hook))`` doing the same, for bridge users."""
        return [(n, lambda act, hook=None, f=f: f(act)) for n, f in self.functions(model)]


#: Interventions of the :func:`intervening` blocks now open: (model, intervention, hook fns).
_SCOPED: ContextVar[tuple[tuple[Any, Intervention, frozenset[int]], ...]] = ContextVar(
    "refusal_lens_scoped_interventions", default=())


@contextmanager
def intervening(model: "LensModel", interventions: Sequence[Intervention]
                ) -> Iterator["LensModel"]:
    """Everything in the ``with`` block runs under ``interventions``: they are live on the
    bridge (for code that calls it directly), and the functions here apply the same values on
    the plain path, so the block takes the path ``interventions=`` would."""
    ivs = _checked(interventions)
    if any(iv.op in ("ablate_grouped", "read") for iv in ivs):
        raise InputError("intervening takes ablations and additions; grouped ablation and "
                         "reads are per call (forward / collect).")
    rendered = [iv.hooks(model) for iv in ivs]
    token = _SCOPED.set(_SCOPED.get() + tuple((model, iv, frozenset(id(fn) for _, fn in r))
                                              for iv, r in zip(ivs, rendered)))
    try:
        with model.bridge.hooks(fwd_hooks=[h for r in rendered for h in r]):
            yield model
    finally:
        _SCOPED.reset(token)


def _checked(interventions: Iterable) -> list[Intervention]:
    out = list(interventions)
    for iv in (iv for iv in out if not isinstance(iv, Intervention)):
        raise InputTypeError(f"interventions takes Intervention values, got "
                             f"{type(iv).__name__}; pass (name, fn) hooks as fwd_hooks=.")
    return out


def _scoped(model: "LensModel") -> list[tuple[Intervention, frozenset[int]]]:
    return [(iv, fns) for m, iv, fns in _SCOPED.get() if m is model]


def _plain_obstacle(model: "LensModel", ivs: list[Intervention], fwd_hooks: Sequence) -> str | None:
    """Why the plain path cannot run these (``None``: it can)."""
    if list(fwd_hooks):
        return "fwd_hooks are TransformerLens hooks, run by the bridge"
    points = residual_modules(model)
    if points is None:
        return "the bridge's blocks do not expose their Hugging Face modules"
    for iv in ivs:
        bad = [n for _, n in iv.names(model) if n not in points]
        if bad:
            return f"{bad[0]} is not a residual hook point"
    ours = set().union(*(fns for _, fns in _scoped(model)))
    for hp in {id(h): h for h in model.bridge.hook_dict.values()}.values():
        live = len(hp._forward_hooks) + len(hp._forward_pre_hooks)
        if live != sum(id(h.user_hook) in ours for h in hp.fwd_hooks):
            return "hooks are live on the bridge (e.g. inside model.bridge.hooks(...))"
    return None


def choose_backend(model: "LensModel", interventions: Sequence[Intervention] = (),
                   fwd_hooks: Sequence = (), backend: str = "auto") -> str:
    """``"plain"`` or ``"bridge"``: the one rule of the module docstring."""
    if backend not in ("auto", "plain", "bridge"):
        raise InputError(f"backend must be 'auto', 'plain' or 'bridge', got {backend!r}.")
    if backend == "bridge":
        return "bridge"
    why = _plain_obstacle(model, _checked(interventions), fwd_hooks)
    if why is not None and backend == "plain":
        raise InputError(f"backend='plain' cannot run this: {why}; use backend='auto'.")
    return "bridge" if why else "plain"


@contextmanager
def running(model: "LensModel", interventions: Sequence[Intervention] = (),
            fwd_hooks: Sequence = (), backend: str = "auto", attn: str | None = None
            ) -> Iterator[nn.Module]:
    """Yield the Hugging Face model to call, with the interventions and hooks active (removed
    on exit). ``attn`` (e.g. ``"sdpa"``) switches the plain path's attention implementation
    for the duration; the bridge always runs the model's own."""
    ivs = _checked(interventions)
    with ExitStack() as stack:
        if choose_backend(model, ivs, fwd_hooks, backend) == "bridge":  # scoped ones are live
            hooks = [h for iv in ivs for h in iv.hooks(model)] + list(fwd_hooks)
            stack.enter_context(model.bridge.hooks(fwd_hooks=hooks))
            yield model.hf_model
            return
        points = residual_modules(model)
        plan: dict[tuple[int, str], tuple[nn.Module, str, list]] = {}
        for iv in [iv for iv, _ in _scoped(model)] + ivs:
            for name, fn in iv.functions(model):
                kind, module = points[name]
                plan.setdefault((id(module), kind), (module, kind, []))[2].append(fn)
        hf = stack.enter_context(bridges_removed(model.hf_model))
        for module, kind, fns in plan.values():
            stack.callback(module_hook(module, kind, fns).remove)
        if attn is not None:
            for cfg in {id(c): c for c in (hf.config, hf.config.get_text_config())}.values():
                stack.callback(setattr, cfg, "_attn_implementation", cfg._attn_implementation)
                cfg._attn_implementation = attn
        yield hf


def _groups(ivs: list[Intervention]) -> int:
    """The group count of the pass's grouped ablations (0: none)."""
    ks = {iv.groups for iv in ivs if iv.op == "ablate_grouped"}
    if len(ks) > 1:
        raise InputError(f"Grouped ablations of different sizes {sorted(ks)} share no pass.")
    return ks.pop() if ks else 0


def forward(model: "LensModel", input_ids: Tensor, attention_mask: Tensor,
            interventions: Sequence[Intervention] = (), fwd_hooks: Sequence = (),
            logits_to_keep: int = 1, share_prefix: bool = True, backend: str = "auto",
            keep: int | None = None) -> Tensor:
    """Logits at the last ``logits_to_keep`` positions of a left-padded batch.

    On the plain path a token prefix shared by every row (the chat template's system turn)
    runs once and is reused through the KV cache, never reaching into a row's last
    ``max(keep, logits_to_keep)`` tokens. With a grouped ablation of ``k`` directions the
    batch runs as ``k`` copies and the logits come back ``(k, batch, ...)``.
    """
    if logits_to_keep < 1:
        raise ValueError(f"logits_to_keep must be >= 1, got {logits_to_keep}.")
    ivs = _checked(interventions)
    k = _groups(ivs)
    n = input_ids.shape[0]
    if k:
        input_ids, attention_mask = input_ids.repeat(k, 1), attention_mask.repeat(k, 1)
    plain = choose_backend(model, ivs, fwd_hooks, backend) == "plain"
    p = (usable_prefix(input_ids, attention_mask, max(keep or 1, logits_to_keep))
         if plain and share_prefix else 0)
    with running(model, ivs, fwd_hooks, "plain" if plain else "bridge") as hf:
        if not p:
            pos = (attention_mask.cumsum(-1) - 1).clamp(min=0)
            out = hf(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos,
                     use_cache=False, logits_to_keep=logits_to_keep).logits
        else:
            prefix, rest, mask, rest_pos = split_prefix(input_ids, attention_mask, p)
            cache = prefix_cache(hf, prefix, input_ids.shape[0], max(k, 1))
            out = hf(input_ids=rest, attention_mask=mask, position_ids=rest_pos,
                     past_key_values=cache, use_cache=True, logits_to_keep=logits_to_keep).logits
    return out.reshape(k, n, *out.shape[1:]) if k else out


@torch.no_grad()
def last_logits(model: "LensModel", batch: "Batch", interventions: Sequence[Intervention] = (),
                fwd_hooks: Sequence = (), backend: str = "auto") -> Float[Tensor, "... vocab"]:
    """Float logits at each prompt's last position (the unembedding runs once per row):
    ``(batch, vocab)``, or ``(k, batch, vocab)`` under a grouped ablation of ``k``."""
    out = forward(model, batch.input_ids, batch.attention_mask, interventions, fwd_hooks, 1,
                  backend=backend)[..., -1, :].float()
    if not torch.isfinite(out).all():
        raise ActivationError("Non-finite logits (NaN/inf activations): check the model dtype "
                              "(use float32), its weights and the inputs.")
    return out


class _Collected(Exception):
    """Raised by the last read a pass needs: the rest of the pass is skipped."""


@dataclass
class Capture:
    """One batch's activations (hook name -> tensor; ``(batch, len(positions), ...)`` when
    positions were given) and, if asked for, its last ``logits_to_keep`` positions' logits."""

    batch: "Batch"
    acts: dict[str, Tensor]
    logits: Tensor | None


@torch.no_grad()
def collect(model: "LensModel", batches: Iterable["Batch"], names: Sequence[str],
            positions: Sequence[int] | None = None, interventions: Sequence[Intervention] = (),
            fwd_hooks: Sequence = (), logits_to_keep: int = 0, backend: str = "auto"
            ) -> Iterator[Capture]:
    """Stream activations at hook ``names``, one :class:`Capture` per batch.

    ``positions`` (negative offsets from each prompt's end) gather those positions of every
    ``(batch, seq, ...)`` activation; an activation of another shape (e.g. a positional
    embedding broadcast over the batch) is then left out. Without ``positions`` the whole
    activation is kept. Without ``logits_to_keep`` the pass stops at the last hook it needs.
    A shared prefix never reaches into the gathered positions or the kept logits.
    """
    names = list(dict.fromkeys(names))
    if not names:
        raise ValueError("names is empty: pass hook names, e.g. ['blocks.5.hook_resid_pre'].")
    missing = [n for n in names if n not in model.bridge.hook_dict]
    if missing:
        raise KeyError(f"Unknown hook names {missing}; see model.bridge.hook_dict for valid ones.")
    got: dict[str, Tensor | None] = {}
    current: list["Batch"] = []
    # the embedding's hooks fire before the blocks or not at all: a pass may end without them
    needed = {n for n in names if not n.startswith("hook_")} or set(names)

    def read(name: str, x: Tensor) -> None:
        b = current[0]
        if chosen == "plain" and positions is not None:  # residual (batch, seq or rest, d):
            pad = (0, 0, b.input_ids.shape[1] - x.shape[1], 0)  # a shared prefix ran apart
            got[name] = b.gather(torch.nn.functional.pad(x, pad), positions)
        else:
            fits = positions is None or x.shape[:2] == b.input_ids.shape
            got[name] = None if not fits else x if positions is None else b.gather(x, positions)
        if not logits_to_keep and needed.issubset(got):
            raise _Collected

    reads = Intervention("read", None, (), tuple(names), reader=read)
    ivs = _checked(interventions) + [reads]
    chosen = choose_backend(model, ivs, fwd_hooks, backend)
    for batch in batches:
        current[:] = [batch]
        got.clear()
        width, logits = batch.input_ids.shape[1], None
        try:
            logits = forward(model, batch.input_ids, batch.attention_mask, ivs, fwd_hooks,
                             max(1, min(logits_to_keep, width)), backend=chosen,
                             keep=max(-min(positions), logits_to_keep) if positions else width)
        except _Collected:
            pass
        yield Capture(batch, {n: v for n, v in got.items() if v is not None},
                      logits if logits_to_keep else None)


@torch.no_grad()
def decode(model: "LensModel", batch: "Batch", max_new_tokens: int, eos: Sequence[int],
           pad_id: int, interventions: Sequence[Intervention] = (), fwd_hooks: Sequence = (),
           attn: str | None = None, share_prefix: bool = True, use_cache: bool = True,
           backend: str = "auto") -> Tensor:
    """Greedy new tokens of a left-padded batch (:func:`greedy_decode`), the shared prefix run
    once on the plain path; ``use_cache=False`` runs the model's own ``generate`` without a
    cache instead (the slow reference)."""
    ivs = _checked(interventions)
    plain = choose_backend(model, ivs, fwd_hooks, backend) == "plain"
    ids, mask = batch.input_ids, batch.attention_mask
    p = usable_prefix(ids, mask, 1) if plain and share_prefix and use_cache else 0
    with running(model, ivs, fwd_hooks, "plain" if plain else "bridge", attn) as hf:
        past = None
        if p:  # the shared prefix runs once; rows are laid out [prefix][pads][rest]
            prefix, rest, mask, _ = split_prefix(ids, mask, p)
            ids = torch.cat([prefix.expand(ids.shape[0], -1), rest], 1)
            past = prefix_cache(hf, prefix, ids.shape[0])
        if use_cache:
            return greedy_decode(hf, ids, mask, max_new_tokens, eos, pad_id, past)
        return reference_decode(hf, ids, mask, max_new_tokens, pad_id)
