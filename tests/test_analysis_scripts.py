"""refusal_lens.analysis_scripts, what the scripts in analyses/ share: options, re-rendering a
figure from its JSON without a model, per-stage timing, and saved directions checked before any
model loads. Fast: fake arguments, the synthetic model, no measurement."""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
from pathlib import Path

import plotly.graph_objects as go
import pytest
import torch

from refusal_lens import analysis_scripts as scripts
from refusal_lens import figure_files, gguf_models
from refusal_lens import model as model_module
from refusal_lens.cliargs import MODEL_HELP
from refusal_lens.directions import Direction
from refusal_lens.errors import DirectionError, InputError

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.stem for p in (ROOT / "analyses").glob("*.py"))
MARKUP = re.compile(r":\w+:`|``|`[^`\s]+`_")  # Sphinx roles, literals, links


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"analyses_{name}", ROOT / "analyses" /
                                                  f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def no_model(monkeypatch):
    """Loading any model fails the test: what is checked must be checked before the load."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(model_module, "load_model", refuse)


@pytest.fixture
def figures(monkeypatch) -> list[tuple[go.Figure, str]]:
    """The figures written, kept in memory instead of files."""
    written: list[tuple[go.Figure, str]] = []

    def keep(fig, stem):
        written.append((fig, str(stem)))
        return []

    monkeypatch.setattr(figure_files, "save_figure", keep)
    return written


# --------------------------------------------------------------------------- options
def test_parser_declares_the_shared_options_once(monkeypatch):
    monkeypatch.delenv("REFUSAL_LENS_FAST", raising=False)
    p = scripts.analysis_parser("What it does.\n\nMore.", "analyses/x.py", "figures/x",
                                seeds=True, rule_dirs=True)
    scripts.add_fit_counts(p)
    scripts.add_count(p, "--n", 8, 50, "test prompts per side")
    scripts.add_tokens_option(p, 16, 32)
    a = p.parse_args([])
    assert (a.model, a.out, a.rerun, a.seeds, a.rule, a.dirs) == \
        ("embedded", "figures/x", False, [0, 1], "joint", "runs/selection_rules")
    assert (a.n_train, a.n_val, a.n, a.max_new_tokens) == (128, 32, 50, 32)
    assert p.parse_args(["--tokens", "7"]).max_new_tokens == 7
    assert p.parse_args(["--max-new-tokens", "9", "--rerun"]).max_new_tokens == 9
    assert p.description == "What it does." and p.prog == "python analyses/x.py"
    assert p._option_string_actions["--model"].help is MODEL_HELP


def test_fast_defaults(monkeypatch):
    monkeypatch.setenv("REFUSAL_LENS_FAST", "1")
    p = scripts.analysis_parser("Doc.", "analyses/x.py")
    scripts.add_fit_counts(p)
    scripts.add_tokens_option(p, 16, 32)
    a = p.parse_args([])
    assert (a.n_train, a.n_val, a.max_new_tokens) == (32, 8, 16)


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_help_is_complete(name, printed_help, capsys):
    with pytest.raises(SystemExit) as exit_:
        _script(name).main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    (parser,) = printed_help
    assert text.startswith(f"usage: python analyses/{name}.py") and parser.description
    assert not MARKUP.search(text), f"{name}: markup in help: {MARKUP.search(text)[0]!r}"
    for action in parser._actions:
        if not isinstance(action, argparse._HelpAction):
            assert action.help, f"{name} {'/'.join(action.option_strings)}: no help text"
    if name != "compare_directions":  # it compares the model specs named in --runs
        assert parser._option_string_actions["--model"].help is MODEL_HELP


# --------------------------------------------------------------------------- figures
def _args(out: Path, **kw) -> argparse.Namespace:
    return argparse.Namespace(out=str(out), rerun=False, **kw)


def test_render_from_json_loads_no_model(tmp_path, no_model, figures):
    (tmp_path / "fig.json").write_text(json.dumps({"x": [1, 2]}))
    summary = scripts.render_or_measure(
        _args(tmp_path / "fig"), lambda a: pytest.fail("measured"),
        lambda s, a: go.Figure(go.Scatter(y=s["x"])))
    assert summary == {"x": [1, 2]}
    assert [stem for _, stem in figures] == [str(tmp_path / "fig")]


def test_rerun_measures(tmp_path, figures):
    (tmp_path / "fig.json").write_text(json.dumps({"x": [1]}))
    args = _args(tmp_path / "fig")
    args.rerun = True
    summary = scripts.render_or_measure(args, lambda a: {"x": [5]},
                                        lambda s, a: go.Figure(go.Scatter(y=s["x"])))
    assert summary == {"x": [5]} and list(figures[0][0].data[0].y) == [5]


def test_unreadable_json_names_the_fix(tmp_path, figures):
    (tmp_path / "fig.json").write_text("{not json")
    with pytest.raises(InputError, match="--rerun"):
        scripts.render_or_measure(_args(tmp_path / "fig"), dict, lambda s, a: go.Figure())


@pytest.mark.parametrize("name", ["addition_by_layer", "category_directions",
                                  "optimized_ablation", "selection_rules", "strength_sweep",
                                  "subspace_ablation"])
def test_committed_figures_render_from_their_json(name, tmp_path, no_model, figures):
    saved = ROOT / "figures" / f"{name}.json"
    if not saved.is_file():
        pytest.skip(f"{saved} is not committed")
    (tmp_path / f"{name}.json").write_text(saved.read_text())
    assert _script(name).main(["--out", str(tmp_path / name)]) == 0
    (fig, stem), = figures
    assert stem == str(tmp_path / name) and fig.data
    assert json.loads(saved.read_text())["model"] in fig.layout.title.text


# --------------------------------------------------------------------------- timing
def test_stages_are_timed_and_saved(tmp_path):
    m = scripts.Measurement(tmp_path / "run", model="m")
    with m.stage("load"):
        pass
    m.save()
    saved = json.loads((tmp_path / "run.json").read_text())
    assert saved["model"] == "m"
    assert set(saved["timing"]) == {"load_s", "total_s"}
    assert 0 <= saved["timing"]["load_s"] <= saved["timing"]["total_s"]


def test_measure_seeds_saves_each_finished_seed(tmp_path):
    m = scripts.Measurement(tmp_path / "run", seeds=[])

    def one(seed: int) -> dict:
        if seed == 2:
            raise RuntimeError("stopped")
        return {"seed": seed}

    with pytest.raises(RuntimeError):
        m.measure_seeds([0, 1, 2], one)
    saved = json.loads((tmp_path / "run.json").read_text())
    assert saved["seeds"] == [{"seed": 0}, {"seed": 1}]
    assert {"seed0_s", "seed1_s", "total_s"} == set(saved["timing"])


# --------------------------------------------------------------------------- directions
def test_model_name_without_loading(synthetic, tmp_path):
    from refusal_lens import embedded
    from refusal_lens.model import model_name

    assert model_name("synthetic") == synthetic.name
    assert model_name("embedded-base") == embedded.BASE_NAME
    spec = next(iter(gguf_models.REGISTRY))
    assert model_name(spec) == gguf_models.REGISTRY[spec].name
    assert model_name(str(tmp_path / "m.gguf")) == "m"
    assert model_name("Qwen/Qwen-1_8B-chat") == "Qwen-1_8B-chat"
    assert model_name(str(tmp_path)) == tmp_path.name


def _save(path: Path, model: str = "synthetic", d_model: int = 4) -> Path:
    Direction(torch.ones(d_model), layer=1, position=-1, model=model).save(path)
    return path


def test_missing_direction_fails_before_the_model(tmp_path, no_model):
    with pytest.raises(DirectionError, match="No direction file.*Fix: run this first"):
        scripts.load_saved_directions({0: tmp_path / "nope"}, "synthetic", "run this first")


def test_corrupt_direction_fails_before_the_model(tmp_path, no_model):
    (tmp_path / "d.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(DirectionError, match="truncated or not a safetensors.*Fix: again"):
        scripts.load_saved_directions({0: tmp_path / "d"}, "synthetic", "again")


def test_direction_of_another_model_fails_before_the_model(tmp_path, no_model):
    _save(tmp_path / "d", model="SmolLM2-135M-Instruct")
    with pytest.raises(DirectionError, match="fitted on 'SmolLM2-135M-Instruct', but --model "
                                             "'synthetic' is 'synthetic'. Fix: other"):
        scripts.load_saved_directions({0: tmp_path / "d"}, "synthetic", "other")


def test_direction_of_the_model_loads(tmp_path, no_model):
    d = scripts.load_saved_directions({7: _save(tmp_path / "d")}, "synthetic", "")
    assert list(d) == [7] and d[7].layer == 1


def test_wrong_width_is_caught_at_load(tmp_path, synthetic):
    d = scripts.load_saved_directions({0: _save(tmp_path / "d", d_model=synthetic.d_model + 1)},
                                      "synthetic", "")
    with pytest.raises(DirectionError, match="width"):
        scripts.load_model_for("synthetic", d.values())


def test_rule_directions_name_the_script_that_writes_them(tmp_path, no_model):
    with pytest.raises(DirectionError, match=r"analyses/selection_rules\.py --model synthetic "
                                             r"--seeds 0 1 --dirs"):
        scripts.rule_directions("synthetic", tmp_path, "joint", [0, 1])


@pytest.mark.parametrize("name", ["strength_sweep", "subspace_ablation", "optimized_ablation",
                                  "category_directions"])
def test_scripts_check_saved_directions_before_the_model(name, tmp_path, no_model, figures):
    args = ["--rerun", "--model", "synthetic", "--dirs", str(tmp_path), "--out",
            str(tmp_path / name)]
    with pytest.raises(DirectionError, match="selection_rules.py"):
        _script(name).main(args)


@pytest.mark.parametrize("name", ["cosine_traces", "dfa_heads", "attention_shift"])
def test_suffix_analyses_check_their_inputs_before_the_model(name, tmp_path, no_model):
    with pytest.raises(InputError, match="No shipped suffix for 'synthetic'.*--search"):
        _script(name).main(["--model", "synthetic", "--out", str(tmp_path / name)])
    with pytest.raises(DirectionError, match="No direction file"):
        _script(name).main(["--direction", str(tmp_path / "nope"), "--out",
                            str(tmp_path / name)])


def test_addition_by_layer_needs_a_finished_run(tmp_path, no_model):
    with pytest.raises(InputError, match=r"report\.json.*refusal-lens run --model synthetic"):
        _script("addition_by_layer").main(["--rerun", "--model", "synthetic", "--run",
                                           str(tmp_path), "--out", str(tmp_path / "a")])
