"""refusal_lens: find, test and explain the refusal direction of chat models.

``import refusal_lens as rl`` is cheap: the names below (and the submodules, e.g. ``rl.plots``)
are imported on first use, so the command line can print its help without loading torch.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

__version__ = "0.1.0"

# Without ipywidgets, tqdm.auto (used by transformers) warns "IProgress not found" in every
# notebook kernel before falling back to text bars; refusal_lens chooses text bars there itself
# (refusal_lens.console), so the hint is noise. Installing ipywidgets gives widget bars instead.
warnings.filterwarnings("ignore", message="IProgress not found")

# public name -> module that defines it (imported on first attribute access): the verbs of a
# notebook, in the order of the work (load -> data -> directions -> interventions -> generation
# -> judging -> selection / evaluation -> weight edits -> section 5 -> the whole pipeline)
_LAZY: dict[str, str] = {
    "LensModel": "model", "load_model": "model",
    "load_splits": "datasets", "default_data": "datasets",
    "Direction": "directions", "mean_diff_candidates": "directions", "random_like": "directions",
    "shipped_direction": "shipped",
    "ablation_hooks": "interventions", "addition_hooks": "interventions",
    "ablated": "interventions", "added": "interventions",
    "ablation": "interventions", "addition": "interventions",
    "Intervention": "execution", "intervening": "execution",
    "generate": "generation",
    "SubstringJudge": "scoring", "discover_refusal_tokens": "scoring", "refusal_rate": "scoring",
    "refusal_metric": "scoring", "completion_cross_entropy": "scoring",
    "SelectionConfig": "selection", "select_direction": "selection",
    "decide": "evaluation", "rate_summary": "evaluation",
    "orthogonalize": "orthogonalize", "export_model": "export",
    "logit_lens": "logit_lens",
    "apply_suffix": "suffixes", "random_suffix": "suffixes", "shipped_suffix": "suffixes",
    "gcg_search": "gcg",
    "suffix_analysis": "traces", "cosine_traces": "traces",
    "direct_feature_attribution": "attribution", "dfa_by_condition": "attribution",
    "head_table": "attribution",
    "attention_shift": "attention", "head_names": "attention",
    "run_pipeline": "pipeline",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    else:
        try:  # a submodule, e.g. ``rl.plots``
            value = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
