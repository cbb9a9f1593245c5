"""Weight orthogonalization: bake directional ablation into the weights.

Every module that writes to the residual stream (token and positional embeddings, each
attention output projection, each MLP output projection, and their biases) gets the unit
direction ``u`` projected out of its output space, ``W <- W - u u^T W``. The edited model then
computes exactly what :func:`refusal_lens.interventions.ablation_hooks` computes with hooks,
with no hooks, so it can be saved and loaded by plain ``transformers`` (see
:mod:`refusal_lens.export`).

Tied embeddings are untied first: the unembedding keeps the original weights.
"""

from __future__ import annotations

import atexit
import copy
import shutil
import tempfile
from typing import Sequence

import torch
from torch import nn

from .directions import Direction
from .interventions import VectorLike, _as_vector
from .model import LensModel, wrap_hf
from .placement import cpu_state_dict, is_dispatched
from .hf_modules import bridges_removed, unwrap

__all__ = ["orthogonalize", "residual_writers"]

# Where the decoder layers live, and which of their submodules write to the residual stream.
_LAYER_LISTS = ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers",
                "transformer.layers")
_ATTN_OUT = ("self_attn.o_proj", "attn.c_proj", "attention.dense", "self_attn.dense",
             "attn.out_proj", "self_attention.dense", "self_attn.out_proj", "attn.attention.out_proj")
_MLP_OUT = ("mlp.down_proj", "mlp.c_proj", "mlp.dense_4h_to_h", "mlp.fc2", "fc2", "mlp.fc_out")
_POS_EMBED = ("transformer.wpe", "model.decoder.embed_positions")
# Architectures where editing the writers is not the same as ablating the residual stream.
_POST_NORM = ("normalises each sublayer's output before adding it to the residual stream, so "
              "projecting the direction out of the output projections does not remove it")
_UNSUPPORTED = {"gemma2": _POST_NORM, "gemma3": _POST_NORM, "gemma3_text": _POST_NORM,
                "olmo2": _POST_NORM, "bloom": "normalises the embeddings before the first layer"}
_HELP = (
    "Pass writers=[...] with the dotted names (as in hf_model.named_modules()) of every module "
    "that writes to the residual stream: the token embedding, any positional embedding, and each "
    "layer's attention output and MLP output projections, e.g. "
    "['model.embed_tokens', 'model.layers.0.self_attn.o_proj', 'model.layers.0.mlp.down_proj', ...]."
)


def _plain_copy(model: LensModel) -> nn.Module:
    """A copy of the wrapped Hugging Face model without TransformerLens wrappers, with the
    unembedding untied from the token embedding (and the config saying so). A model dispatched
    by accelerate is gathered onto the CPU (see :func:`_gathered_copy`)."""
    if is_dispatched(model.hf_model):
        clean = _gathered_copy(model.hf_model)
    else:
        with bridges_removed(model.hf_model) as hf:
            clean = copy.deepcopy(hf)
    out_emb, in_emb = clean.get_output_embeddings(), clean.get_input_embeddings()
    if out_emb is not None and out_emb.weight.data_ptr() == in_emb.weight.data_ptr():
        out_emb.weight = nn.Parameter(in_emb.weight.detach().clone(),
                                      requires_grad=in_emb.weight.requires_grad)
    for cfg in {id(c): c for c in (clean.config, clean.config.get_text_config())}.values():
        cfg.tie_word_embeddings = False
    # Drop parameters and buffers the bridge added (e.g. an all-zero unembedding bias) that the
    # architecture does not have, so save_pretrained / from_pretrained round-trip exactly.
    with torch.device("meta"):
        expected = set(type(clean)(copy.deepcopy(clean.config)).state_dict())
    for name, param in list(clean.state_dict(keep_vars=True).items()):
        if name in expected:
            continue
        owner_name, _, leaf = name.rpartition(".")
        owner = clean.get_submodule(owner_name)
        if bool((param == 0).all()):  # a parameter or a (persistent) buffer
            if leaf in owner._buffers:
                del owner._buffers[leaf]
                setattr(owner, leaf, None)
            else:
                owner.register_parameter(leaf, None)
        else:
            raise NotImplementedError(
                f"{name} is not a parameter of {type(clean).__name__} but holds nonzero values; "
                "this model cannot be saved as a plain Hugging Face checkpoint."
            )
    return clean


def _gathered_copy(hf: nn.Module) -> nn.Module:
    """A plain CPU copy of a dispatched model: every weight read from wherever it lives (GPUs,
    CPU, accelerate's disk offload), with no accelerate hooks. Holds one full copy of the
    weights in CPU memory."""
    state = cpu_state_dict(hf)
    with torch.device("meta"):
        clean = type(unwrap(hf))(copy.deepcopy(hf.config))
    expected = clean.state_dict()
    extra = [k for k in state if k not in expected]
    nonzero = [k for k in extra if not bool((state[k] == 0).all())]
    if nonzero:  # the bridge's additions are all-zero (see _plain_copy)
        raise NotImplementedError(f"{nonzero} are not weights of {type(clean).__name__}; this "
                                  "model cannot be saved as a plain Hugging Face checkpoint.")
    clean.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False,
                          assign=True)
    with bridges_removed(hf):
        source_buffers = dict(hf.named_buffers())
    for name, buf in list(clean.named_buffers()):  # non-persistent ones (e.g. RoPE frequencies)
        if buf.device.type == "meta":
            src = source_buffers.get(name)
            if src is None or src.device.type == "meta":
                raise NotImplementedError(f"Cannot read buffer {name} of the dispatched model.")
            owner, _, leaf = name.rpartition(".")
            clean.get_submodule(owner)._buffers[leaf] = src.detach().to("cpu", copy=True)
    if getattr(clean.config, "tie_word_embeddings", False):
        clean.tie_weights()
    left = [n for n, p in clean.named_parameters() if p.device.type == "meta"]
    if left:
        raise NotImplementedError(f"Weights {left[:5]} of the dispatched model were not found.")
    clean.generation_config = copy.deepcopy(hf.generation_config)
    return clean.eval()


def _redispatch(clean: nn.Module, like: LensModel) -> nn.Module:
    """Place ``clean`` as accelerate placed ``like``'s model (same device map); its
    disk-offloaded modules go to a fresh folder beside ``like``'s offload folder (removed at
    exit)."""
    from accelerate import dispatch_model

    device_map = dict(like.hf_model.hf_device_map)
    offload_dir = None
    if "disk" in map(str, device_map.values()):
        parent = (like.info.get("placement") or {}).get("offload_folder")
        offload_dir = tempfile.mkdtemp(prefix="refusal_lens_offload_", dir=parent)
        atexit.register(shutil.rmtree, offload_dir, ignore_errors=True)
    return dispatch_model(clean, device_map=device_map, offload_dir=offload_dir)


def residual_writers(hf_model: nn.Module) -> list[str]:
    """Dotted names of the modules of ``hf_model`` that write to the residual stream."""
    model_type = getattr(hf_model.config.get_text_config(), "model_type", "")
    if model_type in _UNSUPPORTED:
        raise NotImplementedError(
            f"{type(hf_model).__name__} ({model_type}) {_UNSUPPORTED[model_type]}, so weight "
            "orthogonalization is not equivalent to ablation there. Use ablation hooks "
            "(refusal_lens.interventions.ablated) instead.")
    with bridges_removed(hf_model):  # Hugging Face names, also for a wrapped model
        names = dict(hf_model.named_modules())
        embed = next(n for n, m in names.items() if m is hf_model.get_input_embeddings())
    writers = [embed] + [p for p in _POS_EMBED if p in names][:1]
    layers = next((p for p in _LAYER_LISTS if isinstance(names.get(p), nn.ModuleList)), None)
    if layers is None:
        raise NotImplementedError(
            f"Cannot find the decoder layers of {type(hf_model).__name__}. " + _HELP)
    for i in range(len(names[layers])):
        for kind, options in (("attention output", _ATTN_OUT), ("MLP output", _MLP_OUT)):
            found = next((f"{layers}.{i}.{o}" for o in options if f"{layers}.{i}.{o}" in names),
                         None)
            if found is None:
                raise NotImplementedError(
                    f"Cannot find the {kind} projection of layer {i} in "
                    f"{type(hf_model).__name__} (tried {', '.join(options)}). " + _HELP)
            writers.append(found)
    return writers


@torch.no_grad()
def _project_out_weights(module: nn.Module, unit64: torch.Tensor) -> None:
    """``W <- W - u u^T W`` along the residual axis (and ``b <- b - (u.b) u``), in float64."""
    kind, d_model, w = type(module).__name__, unit64.shape[0], module.weight
    if isinstance(module, nn.Linear):
        axis = 0
    elif isinstance(module, nn.Embedding) or kind == "Conv1D":  # GPT-2's Conv1D is (in, out)
        axis = 1
    else:
        raise NotImplementedError(f"Don't know how {kind} writes to the residual stream. " + _HELP)
    if w.shape[axis] != d_model:
        raise NotImplementedError(f"{kind} of shape {tuple(w.shape)} does not write a "
                                  f"{d_model}-wide residual stream. " + _HELP)
    u = unit64.to(w.device)
    w64 = w.to(torch.float64, copy=True)
    if axis == 0:
        w64.addr_(u, u @ w64, alpha=-1)
    else:
        w64.addr_(w64 @ u, u, alpha=-1)
    w.copy_(w64)
    bias = getattr(module, "bias", None)
    if isinstance(bias, torch.Tensor) and bias.shape == (d_model,):
        b64 = bias.to(torch.float64)
        bias.copy_((b64 - (b64 @ u) * u).to(bias.dtype))


def orthogonalize(
    model: LensModel, direction: VectorLike, writers: Sequence[str] | None = None
) -> LensModel:
    """A new ``LensModel`` whose weights have ``direction`` projected out (``model`` untouched).

    ``writers`` overrides the automatic choice of modules to edit (see :func:`residual_writers`).
    The unembedding is never edited; tied embeddings are untied first. The copy of a model
    dispatched by accelerate is gathered onto the CPU, edited there and placed with the same
    device map (so the CPU briefly holds all its weights).
    """
    vec = _as_vector(direction, model)
    unit64 = (vec.to(torch.float64) / vec.to(torch.float64).norm()).cpu()
    hf = _plain_copy(model)
    modules = dict(hf.named_modules())
    names = list(writers) if writers is not None else residual_writers(hf)
    missing = [n for n in names if n not in modules]
    if missing:
        raise ValueError(f"No modules named {missing} in {type(hf).__name__}. " + _HELP)
    for name in names:
        _project_out_weights(modules[name], unit64)
    if is_dispatched(model.hf_model):
        hf = _redispatch(hf, model)
    meta = direction.metadata() if isinstance(direction, Direction) else {
        "d_model": int(vec.shape[0]), "norm": float(vec.norm())}
    info = dict(model.info)
    info["orthogonalized"] = [*model.info.get("orthogonalized", []), meta]
    info["orthogonalized_from"] = model.info.get("orthogonalized_from", model.name)
    info["writers"] = names
    return wrap_hf(hf, model.tokenizer, f"{info['orthogonalized_from']}-orthogonalized",
                   source=getattr(model.bridge.cfg, "model_name", None) or model.name,
                   system=model.chat.system,
                   device=None if is_dispatched(hf) else model.device,
                   dtype=next(hf.parameters()).dtype, info=info)
