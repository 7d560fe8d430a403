"""``vprompt data check`` (registered on a local parser: the lead wires it into the CLI)."""

import argparse

from vprompt.cli import data as data_cli


def run(argv):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    data_cli.register(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def test_check_reports_vtab_size_mismatch(vtab_root, capsys):
    assert run(["data", "check", "vtab1k:eurosat", "--root", str(vtab_root)]) == 1
    out = capsys.readouterr().out
    assert "vtab1k:eurosat: 10 classes" in out
    assert "4 (expected 800) images" in out
    assert "[train]: 4 images, expected 800" in out and "problem(s)" in out


def test_check_ok(coop_root, capsys):
    assert run(["data", "check", "vp:eurosat", "--root", str(coop_root), "--quick"]) == 0
    out = capsys.readouterr().out
    assert out.strip().endswith("OK") and "train" in out
