"""Options shared by several commands come from akd_edge.cli.common: same name, type and wording everywhere."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from akd_edge.cli.main import cli

COMMANDS = ("train-teacher", "distill", "eval", "compress", "export", "verify")


def _options(command: str) -> dict[str, click.Option]:
    params = cli.commands[command].params
    return {opt: p for p in params if isinstance(p, click.Option) for opt in p.opts}


@pytest.mark.parametrize(
    ("flag", "commands"),
    [
        ("--device", ("train-teacher", "distill", "eval", "compress")),
        ("--data-dir", ("train-teacher", "distill", "eval", "export", "verify")),
        ("--threads", ("eval", "verify")),
        ("--out", ("train-teacher", "distill", "eval", "compress", "export")),
        ("--set", ("train-teacher", "distill", "compress")),
        ("--seed", ("eval", "compress", "export", "verify")),
        ("-n", ("eval", "compress", "export", "verify")),
        ("--which", ("eval", "compress", "export")),
        ("--model-factory", ("eval", "compress", "export", "verify")),
        ("--teacher-factory", ("distill", "compress")),
    ],
)
def test_a_shared_option_has_one_shape_everywhere(flag: str, commands: tuple[str, ...]) -> None:
    options = [_options(c)[flag] for c in commands]
    assert len({(tuple(o.opts), type(o.type).__name__, o.multiple, o.metavar) for o in options}) == 1, flag
    assert all(o.help for o in options), flag
    if flag not in ("--out", "-n", "--which", "--seed", "--set"):  # these say what the command writes or uses
        assert len({" ".join(o.help.split()[:2]) for o in options}) == 1, flag


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_lists_its_options_once(command: str) -> None:
    flags = [opt for p in cli.commands[command].params for opt in getattr(p, "opts", [])]
    assert len(flags) == len(set(flags)), command


@pytest.mark.parametrize(("command", "flag"), [("eval", "--model-factory"), ("distill", "--teacher-factory")])
def test_factory_help_warns_that_it_runs_code(command: str, flag: str) -> None:
    text = " ".join(CliRunner().invoke(cli, [command, "--help"]).output.split())
    assert flag in text and "imports MODULE, which runs its code: pass only code you trust" in text


def test_short_n_is_the_same_as_long_n() -> None:
    for args in (["-n", "-1"], ["--n", "-1"]):
        result = CliRunner().invoke(cli, ["eval", "x", *args])
        assert result.exit_code == 2 and "x>=0" in result.output


def test_threads_must_not_be_negative() -> None:
    result = CliRunner().invoke(cli, ["eval", "x", "--threads", "-1"])
    assert result.exit_code == 2 and "--threads" in result.output
