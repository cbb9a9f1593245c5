"""Shared fixtures. The whole test session runs offline."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def synthetic():
    """The tiny synthetic model with a planted direction, wrapped as a LensModel."""
    from refusal_lens import load_model

    return load_model("synthetic")


@pytest.fixture(scope="session")
def embedded_base():
    """SmolLM2-135M-Instruct as shipped (no refusal fine-tune)."""
    from refusal_lens import load_model

    return load_model("embedded-base")


@pytest.fixture(scope="session")
def embedded():
    """The refusal organism (base + shipped safety adapter)."""
    from refusal_lens import load_model

    return load_model("embedded")
