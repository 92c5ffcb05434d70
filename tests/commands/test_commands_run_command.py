"""run_command: the one way every command ends on bad input or Ctrl-C."""

from __future__ import annotations

import pytest

from imgclf.commands import run_command
from imgclf.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, InputError


def test_body_exit_code_passes_through(capsys):
    assert run_command(lambda: 1, prog="tool.py") == 1
    assert capsys.readouterr().err == ""


def test_input_error_is_one_line_and_exit_2(capsys):
    def body() -> int:
        raise InputError("list.csv line 3 has no url; add one.")

    assert run_command(body, prog="tool.py") == EXIT_BAD_INPUT
    assert capsys.readouterr().err == "tool.py: error: list.csv line 3 has no url; add one.\n"


@pytest.mark.parametrize("hint", ["", "rerun to resume."])
def test_ctrl_c_is_exit_130_with_the_hint(capsys, hint):
    def body() -> int:
        raise KeyboardInterrupt

    assert run_command(body, prog="tool.py", on_interrupt=hint) == EXIT_INTERRUPTED
    expected = "tool.py: interrupted" + (f"; {hint}" if hint else "")
    assert capsys.readouterr().err.strip() == expected


def test_other_errors_are_not_swallowed():
    def body() -> int:
        raise ValueError("a bug")

    with pytest.raises(ValueError):
        run_command(body, prog="tool.py")
