"""Directions: difference-in-means candidates, and ``Direction`` objects saved as safetensors + JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch
from jaxtyping import Float
from safetensors.torch import load_file, save

from .paths import atomic_write_bytes, atomic_write_text
from .sinks import project_off_basis

if TYPE_CHECKING:
    from .model import LensModel


class DirectionError(ValueError):
    """A direction that does not fit the model or data it is used with."""


@torch.no_grad()
def mean_diff_candidates(
    model: "LensModel",
    harmful: Sequence[str],
    harmless: Sequence[str],
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    batch_size: int = 32,
    system: str | None = None,
) -> Float[torch.Tensor, "layer pos d_model"]:
    """Difference in means, harmful minus harmless, of ``resid_pre`` at every (layer, position).

    Accumulated in float64 from streaming means. Positions default to the post-instruction ones.
    """
    for name, data in (("harmful", harmful), ("harmless", harmless)):
        if len(data) == 0:
            raise DirectionError(
                f"No {name} prompts left to fit on (empty, or all removed by the refusal filter). "
                "Pass more prompts or relax the filter (filter_prompts=False)."
            )
    kw = dict(layers=layers, positions=positions, batch_size=batch_size, system=system)
    return model.resid_means(harmful, **kw) - model.resid_means(harmless, **kw)


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
        self.vector = torch.as_tensor(self.vector).detach().reshape(-1)
        if not torch.isfinite(self.vector).all():
            raise DirectionError("The direction contains NaN or inf; refit it on finite activations.")
        if float(self.vector.norm()) == 0.0:
            raise DirectionError("The direction is the zero vector and cannot be normalised.")

    @property
    def d_model(self) -> int:
        return int(self.vector.shape[0])

    @property
    def unit(self) -> Float[torch.Tensor, "d_model"]:
        return self.vector / self.vector.norm()

    @property
    def norm(self) -> float:
        return float(self.vector.norm())

    def check_width(self, model: "LensModel") -> None:
        """Raise a clear error if the direction does not fit ``model``'s residual stream."""
        if self.d_model != model.d_model:
            raise DirectionError(
                f"Direction has width {self.d_model} but {model.name} has d_model {model.d_model}: "
                f"it was fitted on {self.model or 'another model'}. Refit it on this model."
            )

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
        st = stem.with_suffix(".safetensors")
        meta_json = json.dumps(self.metadata(), indent=2, default=str)
        atomic_write_bytes(st, save(tensors, metadata={"refusal_lens": meta_json}))
        js = atomic_write_text(stem.with_suffix(".json"), meta_json + "\n")
        return st, js

    @classmethod
    def load(cls, path: str | Path, model: "LensModel | None" = None) -> "Direction":
        """Load a saved direction (safetensors only); check its width against ``model``."""
        path = Path(path)
        stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
        st = stem.with_suffix(".safetensors")
        if not st.is_file():
            raise FileNotFoundError(f"No direction file at {st}; save one with Direction.save().")
        tensors = load_file(str(st))
        if "direction" not in tensors:
            raise DirectionError(f"{st} has no tensor named 'direction' (found {list(tensors)}).")
        js = stem.with_suffix(".json")
        meta = json.loads(js.read_text()) if js.is_file() else {}
        known = {k: meta[k] for k in ("layer", "position", "model", "dataset_hash", "seed", "meta")
                 if k in meta}
        known.setdefault("layer", -1)
        known.setdefault("position", -1)
        extra = {k: v for k, v in tensors.items() if k != "direction"}
        direction = cls(tensors.pop("direction").to(torch.float64), **known, tensors=extra)
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
