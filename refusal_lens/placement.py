"""Where a model's weights live: one device, or dispatched by accelerate over several devices.

:func:`check_placement` validates ``device`` / ``dtype`` / ``device_map`` / ``max_memory`` /
``offload_folder`` before anything is loaded, so a value that cannot be honoured is a clear
error instead of a silent fallback. The other helpers answer placement questions about a loaded
(possibly dispatched) Hugging Face model: the device a module computes on
(:func:`execution_device`), and its weights gathered onto the CPU wherever they live, including
accelerate's disk offload (:func:`materialized`, :func:`cpu_state_dict`).
"""

from __future__ import annotations

import re
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from .configs import DEVICE_MAP_STRATEGIES, PLACEMENT_DTYPES

__all__ = ["PlacementError", "Placement", "check_placement", "parse_dtype", "parse_max_memory",
           "execution_device", "is_dispatched", "materialized", "cpu_state_dict", "DTYPES",
           "DEVICE_MAP_STRATEGIES"]

#: dtype names accepted by ``load_model`` and ``--dtype``.
DTYPES = {name: getattr(torch, name) for name in PLACEMENT_DTYPES}
_OFFLOAD_TARGETS = ("cpu", "disk")


class PlacementError(ValueError):
    """A device, dtype or dispatch setting this machine cannot honour."""


@dataclass(frozen=True)
class Placement:
    """A validated placement: either one ``device`` or an accelerate ``device_map``."""

    dtype: torch.dtype = torch.float32
    device: torch.device | None = None
    device_map: str | dict[str, Any] | None = None
    max_memory: dict[Any, int] | None = None
    offload_folder: str | None = None

    def from_pretrained_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``from_pretrained`` (the device is applied afterwards)."""
        kw: dict[str, Any] = {}
        if self.device_map is not None:
            kw["device_map"] = self.device_map
            if self.max_memory is not None:
                kw["max_memory"] = self.max_memory
            if self.offload_folder is not None:
                kw["offload_folder"] = self.offload_folder
        return kw

    def describe(self, hf_model: nn.Module | None = None) -> dict[str, Any]:
        """JSON-friendly description (recorded in ``LensModel.info`` and run reports), with the
        device map accelerate realised for ``hf_model`` when it is dispatched."""
        out = {"dtype": str(self.dtype).removeprefix("torch."),
               "device": None if self.device is None else str(self.device),
               "device_map": self.device_map,
               "max_memory": None if self.max_memory is None else
               {str(k): v for k, v in self.max_memory.items()},
               "offload_folder": self.offload_folder}
        if hf_model is not None and is_dispatched(hf_model):
            out["realized_device_map"] = {k: str(v) for k, v in hf_model.hf_device_map.items()}
        return out


def parse_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """A floating torch dtype from a dtype or its name (``"float32"``, ``"bfloat16"``, ...)."""
    if isinstance(dtype, str):
        key = dtype.removeprefix("torch.")
        if key not in DTYPES:
            raise PlacementError(f"Unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}.")
        return DTYPES[key]
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise PlacementError(f"dtype must be a floating torch dtype such as torch.float32, got "
                             f"{dtype!r}; use one of {', '.join(DTYPES)}.")
    return dtype


def _cuda_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_device(device: str | int | torch.device) -> torch.device:
    """``device`` as a ``torch.device`` that exists on this machine, else a clear error."""
    if isinstance(device, bool):
        raise PlacementError(f"Not a device: {device!r}.")
    try:
        dev = torch.device(f"cuda:{device}" if isinstance(device, int) else device)
    except (RuntimeError, TypeError) as err:
        raise PlacementError(f"Unknown device {device!r} ({err}); use 'cpu', 'cuda', "
                             "'cuda:N' or 'mps'.") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        n = _cuda_count()
        if n == 0:
            raise PlacementError(f"Device {device!r} requested but this machine has no CUDA "
                                 "device (torch.cuda.is_available() is False); use "
                                 "device='cpu' (--device cpu).")
        if dev.index is not None and dev.index >= n:
            raise PlacementError(f"Device {device!r} requested but this machine has {n} CUDA "
                                 f"device(s): cuda:0..cuda:{n - 1}.")
        return dev
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise PlacementError(f"Device {device!r} requested but MPS is not available here; "
                                 "use device='cpu'.")
        return dev
    raise PlacementError(f"Device type {dev.type!r} is not supported; use 'cpu', 'cuda', "
                         "'cuda:N' or 'mps'.")


def default_device() -> torch.device:
    """The first CUDA device if there is one, else the CPU."""
    return torch.device("cuda", 0) if _cuda_count() else torch.device("cpu")


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B)?\s*$", re.IGNORECASE)


def _size(value: Any, key: Any) -> int:
    if isinstance(value, bool):
        raise PlacementError(f"max_memory[{key!r}] = {value!r} is not a size.")
    if isinstance(value, int):
        n = value
    elif isinstance(value, str) and _SIZE.match(value):
        from accelerate.utils import convert_file_size_to_int

        n = convert_file_size_to_int(value.strip().replace(" ", ""))
    else:
        raise PlacementError(f"max_memory[{key!r}] = {value!r} is not a size; write bytes or "
                             "a string such as '20GiB' or '500MB'.")
    if n <= 0:
        raise PlacementError(f"max_memory[{key!r}] must be positive, got {value!r}; write e.g. "
                             "'20GiB'.")
    return n


def _memory_key(key: Any) -> Any:
    if isinstance(key, int) and not isinstance(key, bool) or (isinstance(key, str)
                                                              and key.isdigit()):
        index = int(key)
        check_device(index)
        return index
    if isinstance(key, str) and key.startswith("cuda"):
        dev = check_device(key)
        return dev.index or 0
    if key in ("cpu", "disk", "mps"):
        if key == "mps":
            check_device("mps")
        return key
    raise PlacementError(f"max_memory key {key!r} is not a device; use GPU indices (0, 1, ...), "
                         "'cpu' or 'disk'.")


def parse_max_memory(text: str) -> dict[Any, int]:
    """``"0=20GiB,1=20GiB,cpu=64GiB"`` (the ``--max-memory`` syntax) as a checked dict."""
    out: dict[Any, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep:
            raise PlacementError(f"--max-memory entry {part!r} is not DEVICE=SIZE; write e.g. "
                                 "'0=20GiB,1=20GiB,cpu=64GiB'.")
        out[key.strip()] = value.strip()
    if not out:
        raise PlacementError("--max-memory is empty; write e.g. '0=20GiB,1=20GiB,cpu=64GiB'.")
    return {_memory_key(k): _size(v, k) for k, v in out.items()}


def _check_map_target(name: str, target: Any) -> Any:
    if isinstance(target, str) and target in _OFFLOAD_TARGETS:
        return target
    if isinstance(target, (int, str, torch.device)) and not isinstance(target, bool):
        if str(target) == "meta":
            raise PlacementError(f"device_map[{name!r}] = 'meta' holds no weights; use a GPU, "
                                 "'cpu' or 'disk'.")
        dev = check_device(target)
        return (dev.index or 0) if dev.type == "cuda" else str(dev)
    raise PlacementError(f"device_map[{name!r}] = {target!r} is not a device; use a GPU index, "
                         "'cuda:N', 'cpu' or 'disk'.")


def check_placement(
    device: str | torch.device | None = None,
    dtype: torch.dtype | str = torch.float32,
    device_map: str | dict[str, Any] | None = None,
    max_memory: dict[Any, Any] | str | None = None,
    offload_folder: str | Path | None = None,
) -> Placement:
    """Validate a placement before loading anything; see the module docstring.

    ``device=None`` without a ``device_map`` means the first CUDA device, else the CPU.
    ``device_map`` is an accelerate strategy (``"auto"``, ``"balanced"``, ...) or a dict from
    module names to GPU indices, ``"cuda:N"``, ``"cpu"`` or ``"disk"``; ``max_memory`` caps
    each device (``{0: "20GiB", "cpu": "64GiB"}`` or the ``--max-memory`` string) and
    ``offload_folder`` holds disk-offloaded weights. These three need ``device_map`` and
    exclude ``device``.
    """
    dtype = parse_dtype(dtype)
    if device_map is None:
        for name, value in (("max_memory", max_memory), ("offload_folder", offload_folder)):
            if value is not None:
                raise PlacementError(f"{name} only applies with a device_map; pass "
                                     "device_map='auto' (--device-map auto) as well.")
        return Placement(dtype, check_device(device) if device is not None else default_device())
    if device is not None:
        raise PlacementError("Pass either device or device_map, not both: device_map already "
                             "says where every module goes.")
    if isinstance(device_map, str):
        if device_map not in DEVICE_MAP_STRATEGIES:
            raise PlacementError(f"Unknown device_map {device_map!r}; use one of "
                                 f"{', '.join(DEVICE_MAP_STRATEGIES)} or a dict of module "
                                 "names to devices.")
        checked_map: str | dict[str, Any] = device_map
    elif isinstance(device_map, dict) and device_map:
        checked_map = {str(k): _check_map_target(str(k), v) for k, v in device_map.items()}
        values = set(map(str, checked_map.values()))
        if values & set(_OFFLOAD_TARGETS) and values - set(_OFFLOAD_TARGETS):
            raise PlacementError(
                "This device_map mixes GPUs with 'cpu'/'disk' offload, which TransformerLens's "
                "bridge refuses; put every module on GPUs, or every module on 'cpu'/'disk'.")
    else:
        raise PlacementError(f"device_map must be a strategy name or a non-empty dict, got "
                             f"{device_map!r}; use 'auto' or e.g. {{'model.layers.0': 0, ...}}.")
    memory = None
    if max_memory is not None:
        if isinstance(max_memory, str):
            memory = parse_max_memory(max_memory)
        elif isinstance(max_memory, dict) and max_memory:
            memory = {_memory_key(k): _size(v, k) for k, v in max_memory.items()}
        else:
            raise PlacementError(f"max_memory must be a non-empty dict such as "
                                 f"{{0: '20GiB', 'cpu': '64GiB'}}, got {max_memory!r}.")
    folder = None
    if offload_folder is not None:
        path = Path(offload_folder).expanduser()
        if path.exists() and not path.is_dir():
            raise PlacementError(f"offload_folder {path} exists and is not a directory.")
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".refusal_lens_write_test"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise PlacementError(f"offload_folder {path} is not writable ({err}).") from None
        folder = str(path)
    return Placement(dtype, None, checked_map, memory, folder)


# ---- questions about a loaded model -------------------------------------------------------
def is_dispatched(hf_model: nn.Module) -> bool:
    """Whether accelerate placed ``hf_model`` with a device map."""
    return bool(getattr(hf_model, "hf_device_map", None))


def execution_device(module: nn.Module) -> torch.device:
    """The device ``module`` computes on: accelerate's execution device for a dispatched
    (or offloaded) module, else the device of its first parameter or buffer."""
    from .hf_modules import unwrap

    module = unwrap(module)
    hook = getattr(module, "_hf_hook", None)
    dev = getattr(hook, "execution_device", None)
    if dev is not None:
        return torch.device(f"cuda:{dev}" if isinstance(dev, int) else dev)
    for sub in module.modules():  # a container's own hook may sit on a child
        dev = getattr(getattr(sub, "_hf_hook", None), "execution_device", None)
        if dev is not None:
            return torch.device(f"cuda:{dev}" if isinstance(dev, int) else dev)
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.device.type != "meta":
            return tensor.device
    return torch.device("cpu")


@contextmanager
def materialized(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` with every offloaded (meta) weight in it loaded onto its execution device for
    the duration, through accelerate's own hooks (a no-op for a model that is not offloaded)."""
    from accelerate.utils.modeling import align_module_device, has_offloaded_params

    from .hf_modules import unwrap

    with ExitStack() as stack:
        for sub in unwrap(module).modules():
            if has_offloaded_params(sub):
                stack.enter_context(align_module_device(sub))
        yield module


def cpu_state_dict(hf_model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and persistent buffer of a (dispatched) Hugging Face model, on the CPU
    (disk-offloaded weights are read back), as new tensors: one copy of the weights in CPU
    memory."""
    from accelerate.utils.modeling import get_state_dict_offloaded_model

    from .hf_modules import bridges_removed

    with bridges_removed(hf_model) as hf:
        state = get_state_dict_offloaded_model(hf)
        live = {t.data_ptr() for t in (*hf.parameters(), *hf.buffers()) if t.device.type == "cpu"}
    # Weights already on the CPU come back as the model's own tensors: copy those, so editing
    # the result never edits the model.
    return {k: v.clone() if v.data_ptr() in live else v for k, v in state.items()}


# ---- command line -------------------------------------------------------------------------
def placement_kwargs(args: Any) -> dict[str, Any]:
    """``load_model`` keyword arguments from parsed placement options
    (:func:`refusal_lens.cliargs.add_placement_args`), checked
    (a :class:`PlacementError` names the bad option)."""
    device_map: Any = args.device_map
    if isinstance(device_map, str) and device_map not in DEVICE_MAP_STRATEGIES:
        import json

        text = device_map
        if not text.lstrip().startswith("{"):
            path = Path(text).expanduser()
            if not path.is_file():
                raise PlacementError(f"--device-map {text!r} is neither a strategy ("
                                     f"{', '.join(DEVICE_MAP_STRATEGIES)}), a JSON object nor a "
                                     ".json file.")
            text = path.read_text()
        try:
            device_map = json.loads(text)
        except json.JSONDecodeError as err:
            raise PlacementError(f"--device-map is not valid JSON ({err}).") from None
    kw = dict(device=args.device, dtype=getattr(args, "model_dtype", "float32"),
              device_map=device_map,
              max_memory=args.max_memory, offload_folder=args.offload_folder)
    check_placement(**kw)
    return kw
