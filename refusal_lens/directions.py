"""Directions: difference-in-means candidates, and ``Direction`` objects saved as safetensors + JSON."""

from __future__ import annotations

import json
import math
import numbers
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from jaxtyping import Float
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from .activations import resid_sums
from .errors import DirectionError, DirectionTransferWarning, InputTypeError
from .paths import atomic_write_bytes, atomic_write_text
from .sinks import project_off_basis

if TYPE_CHECKING:
    from .model import LensModel


def check_vector(vector: Any, d_model: int | None = None, what: str = "direction"
                 ) -> Float[torch.Tensor, "d_model"]:
    """``vector`` as a 1-D floating tensor, or a clear error: wrong type or dtype, not 1-D,
    the wrong width, NaN/inf, or zero. Nothing is flattened or cast silently."""
    if isinstance(vector, Direction):
        vector = vector.vector
    try:
        vec = torch.as_tensor(vector)
    except (TypeError, ValueError, RuntimeError) as err:
        raise InputTypeError(f"The {what} must be a 1-D float tensor, got "
                             f"{type(vector).__name__} ({err}).") from err
    if not (vec.is_floating_point()):
        raise InputTypeError(f"The {what} has dtype {vec.dtype}; pass a floating tensor "
                             "(e.g. v.float()): integer directions are not meaningful.")
    if vec.dim() != 1:
        raise DirectionError(f"The {what} has shape {tuple(vec.shape)}; pass one 1-D "
                             "(d_model,) vector (select a row, e.g. v[0], rather than flatten).")
    if d_model is not None and vec.shape[0] != d_model:
        raise DirectionError(f"Vector has width {vec.shape[0]} but the model has d_model "
                             f"{d_model}.")
    if not torch.isfinite(vec).all():
        raise DirectionError(f"The {what} contains NaN or inf; refit it on finite activations.")
    norm = float(vec.detach().double().norm())
    if norm == 0.0:
        raise DirectionError(f"The {what} is the zero vector and cannot be normalised.")
    if not math.isfinite(norm):
        raise DirectionError(f"The {what}'s norm overflows float64; rescale it.")
    return vec.detach()


def unit_vector(vec: torch.Tensor) -> torch.Tensor:
    """``vec / |vec|`` computed in float64 (no overflow for entries ~1e19), in ``vec``'s dtype."""
    v64 = vec.detach().double()
    return (v64 / v64.norm()).to(vec.dtype)


@torch.no_grad()
def mean_diff_candidates(
    model: "LensModel",
    harmful: Sequence[str],
    harmless: Sequence[str],
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    batch_size: int = 32,
    system: str | None = None,
    keep: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
    min_kept: int = 1,
    progress: bool = True,
) -> Float[torch.Tensor, "layer pos d_model"]:
    """Difference in means, harmful minus harmless, of ``resid_pre`` at every (layer, position).

    Accumulated in float64 from streaming sums (:func:`refusal_lens.activations.resid_sums`).
    Positions default to the post-instruction ones. ``keep(side, logits)`` (``side`` is
    ``"harmful"`` or ``"harmless"``; ``logits`` the batch's last-position logits) picks the
    prompts each mean is taken over, in the same pass (e.g. the paper's refusal-metric
    filter); a side with fewer than ``min_kept`` kept prompts is averaged unfiltered.
    """
    for name, data in (("harmful", harmful), ("harmless", harmless)):
        if len(data) == 0:
            raise DirectionError(
                f"No {name} prompts left to fit on (empty, or all removed by the refusal filter). "
                "Pass more prompts or relax the filter (filter_prompts=False)."
            )
    means = []
    for side, data in (("harmful", harmful), ("harmless", harmless)):
        rule = None if keep is None else (lambda logits, side=side: keep(side, logits))
        s = resid_sums(model, data, layers, positions, batch_size=batch_size, system=system,
                       progress=progress, keep=rule)
        means.append(s.kept / s.n_kept if s.n_kept >= min_kept else s.total / s.n)
    return means[0] - means[1]


def _beside(stem: Path, suffix: str) -> Path:
    """``stem`` + ``suffix`` (``with_suffix`` would cut a stem with a dot, e.g.
    ``qwen2.5-coder-0.5b-instruct``, at its last dot)."""
    return stem.parent / (stem.name + suffix)


@dataclass
class Direction:
    """A residual-stream direction: the raw vector plus where and how it was found.

    ``vector`` is the raw difference in means (its norm is meaningful for activation addition),
    after any projection off the attention-sink subspace (see :mod:`refusal_lens.sinks`);
    ``unit`` is the normalised direction used for ablation. ``tensors`` holds companions saved
    in the same file: ``mean_diff`` (the unprojected difference in means) and ``sink_basis``
    (the subspace projected out; random controls are drawn off it too).
    """

    vector: Float[torch.Tensor, "d_model"]
    layer: int
    position: int
    model: str = ""
    dataset_hash: str = ""
    seed: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.vector = check_vector(self.vector)
        for key in ("layer", "position"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise InputTypeError(f"Direction {key} must be an int, got {value!r}.")
            setattr(self, key, int(value))

    @property
    def d_model(self) -> int:
        return int(self.vector.shape[0])

    @property
    def unit(self) -> Float[torch.Tensor, "d_model"]:
        return unit_vector(self.vector)

    @property
    def norm(self) -> float:
        return float(self.vector.double().norm())

    def check_width(self, model: "LensModel") -> list[str]:
        """Raise a clear error if the direction does not fit ``model``'s residual stream
        (width, layer); warn (:class:`DirectionTransferWarning`) if it was fitted on another
        model, and return the warnings so callers can record them in their outputs."""
        if self.d_model != model.d_model:
            raise DirectionError(
                f"Direction has width {self.d_model} but {model.name} has d_model {model.d_model}: "
                f"it was fitted on {self.model or 'another model'}. Refit it on this model."
            )
        if not 0 <= self.layer < model.n_layers:
            raise DirectionError(
                f"Direction layer {self.layer} is outside {model.name}'s layers "
                f"0..{model.n_layers - 1}; refit it on this model or set direction.layer.")
        notes = []
        if self.model and self.model != model.name:
            notes.append(f"direction fitted on {self.model!r} used on {model.name!r} "
                         "(cross-model transfer)")
            warnings.warn(notes[-1], DirectionTransferWarning, stacklevel=2)
        return notes

    def metadata(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("vector")
        data.pop("tensors")
        data["d_model"] = self.d_model
        data["norm"] = self.norm
        return data

    def save(self, path: str | Path) -> tuple[Path, Path]:
        """Write ``<stem>.safetensors`` (key ``direction``, plus ``tensors``) and ``<stem>.json``,
        atomically."""
        path = Path(path)
        stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
        tensors = {k: v.contiguous().cpu() for k, v in self.tensors.items()}
        tensors["direction"] = self.vector.to(torch.float32).contiguous().cpu()
        st = _beside(stem, ".safetensors")
        meta_json = json.dumps(self.metadata(), indent=2, default=str)
        atomic_write_bytes(st, save(tensors, metadata={"refusal_lens": meta_json}))
        js = atomic_write_text(_beside(stem, ".json"), meta_json + "\n")
        return st, js

    @classmethod
    def load(cls, path: str | Path, model: "LensModel | None" = None) -> "Direction":
        """Load a saved direction (safetensors only); check its width against ``model``.

        The safetensors header's metadata is the source of truth; ``<stem>.json`` mirrors it
        and must agree (a missing JSON is fine, a disagreeing one is an error)."""
        path = Path(path)
        stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
        st = _beside(stem, ".safetensors")
        if not st.is_file():
            raise FileNotFoundError(f"No direction file at {st}; save one with Direction.save().")
        try:
            with safe_open(str(st), "pt") as fh:
                header = (fh.metadata() or {}).get("refusal_lens")
            tensors = load_file(str(st))
        except (SafetensorError, OSError, ValueError) as err:
            raise DirectionError(f"{st} is truncated or not a safetensors file ({err}); "
                                 "save the direction again with Direction.save().") from err
        if "direction" not in tensors:
            raise DirectionError(f"{st} has no tensor named 'direction' (found {list(tensors)}).")
        if header is None:
            raise DirectionError(f"{st} has no refusal_lens metadata in its header (layer, "
                                 "position, model); save it with Direction.save().")
        meta = json.loads(header)
        js = _beside(stem, ".json")
        if js.is_file():
            try:
                mirror = json.loads(js.read_text())
            except json.JSONDecodeError as err:
                raise DirectionError(f"{js} is not valid JSON ({err}); delete it (the "
                                     f"metadata in {st.name} is the source of truth).") from err
            diff = sorted(k for k in set(meta) | set(mirror) if meta.get(k) != mirror.get(k))
            if diff:
                raise DirectionError(
                    f"{js.name} disagrees with the metadata in {st.name} on {diff} (e.g. "
                    f"{diff[0]}: {mirror.get(diff[0])!r} vs {meta.get(diff[0])!r}); the "
                    f"safetensors header is the source of truth: delete {js.name} or save "
                    "the direction again.")
        known = {k: meta[k] for k in ("layer", "position", "model", "dataset_hash", "seed", "meta")
                 if k in meta}
        extra = {k: v for k, v in tensors.items() if k != "direction"}
        vec = tensors.pop("direction")
        if "d_model" in meta and meta["d_model"] != vec.shape[-1]:
            raise DirectionError(f"{st} says d_model {meta['d_model']} but holds a vector of "
                                 f"shape {tuple(vec.shape)}; the file is corrupt, save it again.")
        direction = cls(vec.to(torch.float64), **known, tensors=extra)
        if model is not None:
            direction.check_width(model)
        return direction


def random_like(
    vector: Float[torch.Tensor, "d_model"], seed: int = 0,
    basis: Float[torch.Tensor, "rank d_model"] | None = None,
) -> Float[torch.Tensor, "d_model"]:
    """A random direction with the same norm as ``vector`` (the control for every effect).

    With ``basis`` (orthonormal rows), drawn in its orthogonal complement, like a direction
    projected off it (see :mod:`refusal_lens.sinks`).
    """
    gen = torch.Generator().manual_seed(seed)
    r = torch.randn(vector.shape[-1], generator=gen, dtype=torch.float64)
    if basis is not None:
        r = project_off_basis(r, basis.cpu())
    return (r / r.norm() * vector.detach().double().norm().cpu()).to(vector.dtype)
