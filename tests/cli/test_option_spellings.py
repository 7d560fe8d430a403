"""One spelling per option across commands: where a command has an option of ``vprompt train``, it is
spelled as there; the old spellings still work but are no longer shown."""

from __future__ import annotations

import argparse

import pytest

from vprompt.cli import build_parser, main
from vprompt.engine.config import config_fields


def commands(parser: argparse.ArgumentParser, path=()):
    """``(command words, parser)`` of every command and sub-command."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, (*path, name))


def test_every_shown_option_of_a_run_field_has_the_train_spelling():
    fields = config_fields()
    wrong = []
    for path, parser in commands(build_parser()):
        for action in parser._actions:
            if action.option_strings and action.help != argparse.SUPPRESS and action.dest in fields:
                flag = "--" + action.dest.replace("_", "-")
                if flag not in action.option_strings:
                    wrong.append(f"vprompt {' '.join(path)} {'/'.join(action.option_strings)}")
    assert wrong == []


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


@pytest.mark.parametrize(
    ("argv", "batch_size", "random_init"),
    [
        ([], 8, True),
        (["--batch-size", "4", "--no-random-init"], 4, False),
        (["--batch", "4", "--pretrained"], 4, False),  # the old spellings
        (["--random-init"], 8, True),
    ],
)
def test_bench_takes_the_train_spellings_and_the_old_ones(argv, batch_size, random_init):
    args = parse("bench", "--backbone", "resnet18", *argv)
    assert (args.batch_size, args.random_init, args.device) == (batch_size, random_init, "auto")


def test_old_spellings_are_hidden_from_help():
    shown = {" ".join(path): parser.format_help() for path, parser in commands(build_parser()) if path}
    assert "--batch-size" in shown["bench"] and "--random-init" in shown["bench"]
    assert "--batch " not in shown["bench"] and "--pretrained" not in shown["bench"]
    assert "--weight-decay" in shown["sweep tune"] and "--wd" not in shown["sweep tune"]
    assert "--output" in shown["data prepare"] and "--out " not in shown["data prepare"]


@pytest.mark.parametrize("flag", ["--weight-decay", "--wd"])
def test_sweep_weight_decays_by_either_spelling(flag):
    args = parse("sweep", "tune", "--output", "x", flag, "0", "1e-4")
    assert args.wd == ["0", "1e-4"]


@pytest.mark.parametrize("flag", ["--output", "--out"])
def test_data_prepare_output_by_either_spelling(flag):
    assert parse("data", "prepare", "vtab1k", flag, "root").out == "root"


def test_every_command_naming_a_backbone_takes_backbone_as_train_spells_it():
    """``sites`` and ``analyze layers`` take BACKBONE positionally (as before) and ``--backbone``, as
    ``train``, ``bench`` and ``classify`` do; every ``--random-init`` has its ``--no-random-init``."""
    missing = []
    for path, parser in commands(build_parser()):
        flags = {dest: [] for dest in ("backbone", "random_init")}
        for action in parser._actions:
            if action.dest in flags:
                flags[action.dest] += action.option_strings
        for dest, flag in (("backbone", "--backbone"), ("random_init", "--no-random-init")):
            if any(a.dest == dest for a in parser._actions) and flag not in flags[dest]:
                missing.append(f"vprompt {' '.join(path)} {flag}")
    assert missing == []


@pytest.mark.parametrize(
    "argv",
    [
        ["sites", "resnet18"],
        ["sites", "--backbone", "resnet18"],
        ["sites", "resnet18", "--backbone", "resnet18"],  # the same name twice is no conflict
        ["analyze", "layers", "resnet18", "--data", "mnist-5k"],
        ["analyze", "layers", "--backbone", "resnet18", "--data", "mnist-5k"],
    ],
)
def test_sites_and_analyze_take_the_backbone_either_way(argv):
    assert parse(*argv).backbone == "resnet18"


def test_two_different_backbones_or_none_are_one_error(capsys):
    with pytest.raises(SystemExit):
        parse("sites", "resnet18", "--backbone", "resnet50")
    assert "the backbone is given twice (resnet18, resnet50)" in capsys.readouterr().err
    assert main(["sites"]) == 2
    assert (
        capsys.readouterr().err == "vprompt sites: error: name a backbone: BACKBONE or --backbone BACKBONE\n"
    )
    assert main(["analyze", "layers", "--data", "mnist-5k"]) == 2
    assert "name a BACKBONE (or --backbone BACKBONE" in capsys.readouterr().err
