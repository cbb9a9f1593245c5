"""The command line: complete help for every command and option, --version, routing, and help
that loads no torch (what keeps `refusal-lens --help` fast; the seconds are in benchmarks/)."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import refusal_lens
from refusal_lens.cli import SUBCOMMANDS, main

ROOT = Path(__file__).resolve().parents[1]
# every command path that has its own parser (subcommands of subcommands included)
COMMANDS = [[], ["run"], ["export"], ["info"], ["data"], ["data", "fetch"], ["organism"],
            ["organism", "train"], ["organism", "eval"], ["suffix"], ["suffix", "search"],
            ["suffix", "random"], ["model"], ["model", "fetch"], ["model", "list"], ["sweep"]]
MARKUP = re.compile(r":\w+:`|``|`[^`\s]+`_")  # Sphinx roles, literals, links


def _help_parser(path: list[str], seen: list[argparse.ArgumentParser]
                 ) -> tuple[argparse.ArgumentParser, str]:
    """The parser that answers ``refusal-lens <path> --help``, and the help it prints (``seen``:
    the ``printed_help`` fixture)."""
    seen.clear()
    with pytest.raises(SystemExit) as exit_:
        main([*path, "--help"])
    assert exit_.value.code == 0, f"refusal-lens {' '.join(path)} --help exited {exit_.value.code}"
    assert len(seen) == 1
    return seen[0], seen[0].format_help()


def test_every_command_is_listed():
    assert {p[0] for p in COMMANDS if p} == set(SUBCOMMANDS)


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "refusal-lens")
def test_help_is_complete_and_plain(path, printed_help, capsys):
    parser, text = _help_parser(path, printed_help)
    assert capsys.readouterr().out.strip() == text.strip()
    assert parser.description, f"{parser.prog}: no description"
    assert not MARKUP.search(text), f"{parser.prog}: markup in help: {MARKUP.search(text)[0]!r}"
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            helps = {c.dest: c.help for c in action._choices_actions}
            assert set(helps) == set(action.choices), f"{parser.prog}: a subcommand without help"
            assert all(helps.values()), f"{parser.prog}: a subcommand without help: {helps}"
            continue
        assert action.help and action.help != argparse.SUPPRESS, \
            f"{parser.prog} {'/'.join(action.option_strings)}: no help text"
        if "--model" in action.option_strings:
            assert action.metavar == "SPEC", f"{parser.prog} --model: metavar {action.metavar}"


def test_help_shows_defaults_once(printed_help):
    _, text = _help_parser(["suffix", "search"], printed_help)
    flat = " ".join(text.split())
    assert "--steps STEPS search steps (default: 100)" in flat
    assert "(default: no limit)" in flat and "(default: None)" not in flat
    _, text = _help_parser(["organism", "train"], printed_help)
    assert "LoRA rank (default: 8)" in " ".join(text.split())


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"refusal-lens {refusal_lens.__version__}"


def test_no_command_is_a_usage_error(capsys):
    assert main([]) == 2
    assert "command" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["nonsense"])
    assert exit_.value.code == 2


def test_data_without_subcommand_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["data"])
    assert exit_.value.code == 2
    assert "fetch" in capsys.readouterr().err


_ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
_PROBE = """
import contextlib, io, sys
from refusal_lens.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    try:
        main({argv!r})
    except SystemExit as e:
        assert e.code == 0, e.code
heavy = [m for m in ("torch", "transformers", "transformer_lens", "plotly") if m in sys.modules]
print(",".join(heavy))
"""


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "refusal-lens")
def test_help_imports_no_torch(path):
    """Help is fast because it loads none of the heavy libraries (a fresh interpreter each)."""
    out = subprocess.run([sys.executable, "-c", _PROBE.format(argv=[*path, "--help"])],
                         capture_output=True, text=True, cwd=ROOT, timeout=120, env=_ENV)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"`{' '.join(path)} --help` imported {out.stdout.strip()}"


def test_import_is_lazy_but_complete():
    """``import refusal_lens`` loads no torch, and every advertised name resolves."""
    probe = ("import sys, refusal_lens as rl; print('torch' in sys.modules); "
             "[getattr(rl, n) for n in rl.__all__]; print(rl.plots.__name__)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT,
                         timeout=300, env=_ENV)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "refusal_lens.plots"]
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        refusal_lens.nonexistent  # noqa: B018


def test_suffix_random(capsys):
    assert main(["suffix", "random", "--model", "synthetic", "--suffix-len", "3"]) == 0
    assert len(capsys.readouterr().out.split()) == 3


def test_info(capsys):
    assert main(["info", "--model", "synthetic"]) == 0
    assert "post-instruction tokens" in capsys.readouterr().out


def test_library_errors_become_one_line(capsys):
    assert main(["info", "--model", "/nonexistent/model/dir"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("refusal-lens info: error:") and "Traceback" not in err


def test_organism_train_passes_hyperparameters(monkeypatch, capsys):
    """Options reach train_organism unchanged (the training itself is tested in test_organism)."""
    from refusal_lens import organism
    from refusal_lens.configs import ORGANISM_DEFAULTS

    got = {}

    def fake(**kw):
        got.update(kw)
        return {"training": {"seconds": 0}}

    monkeypatch.setattr(organism, "train_organism", fake)
    assert main(["organism", "train", "--r", "4", "--lr", "0.001", "--no-eval"]) == 0
    assert got["r"] == 4 and got["lr"] == 0.001 and got["evaluate"] is False
    assert got["epochs"] == ORGANISM_DEFAULTS["epochs"] and got["seed"] == 0
    assert json.loads(capsys.readouterr().out) == {"training": {"seconds": 0}}
