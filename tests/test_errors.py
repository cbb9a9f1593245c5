"""The exception hierarchy: each error is a ValueError or TypeError; the CLI prints one line."""

from __future__ import annotations

import inspect

from refusal_lens import errors
from refusal_lens.cli import main


def test_every_error_is_a_value_or_type_error():
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass)
               if issubclass(c, errors.RefusalLensError)]
    assert len(classes) >= 9
    for c in classes:
        if c is not errors.RefusalLensError:
            assert issubclass(c, (ValueError, TypeError)), c
    assert issubclass(errors.RunDirError, FileExistsError)  # callers catching that still work
    assert issubclass(errors.PositionError, IndexError)


def test_cli_reports_bad_input_as_one_line(tmp_path, capsys):
    assert main(["run", "--model", "synthetic", "--out", str(tmp_path / "o"),
                 "--max-new-tokens", "0"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == ("refusal-lens run: error: max_new_tokens must be an integer >= 1, "
                           "got 0 (--max-new-tokens).")
