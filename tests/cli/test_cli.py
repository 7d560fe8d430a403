"""The command line: sub-commands are listed, tables print, errors exit 2 with one clear line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from vprompt.cli import main


def test_help_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for command in ("backbones", "sites", "classify", "demo"):
        assert command in out


def test_console_script_is_installed():
    result = subprocess.run(
        [sys.executable, "-m", "vprompt", "--version"], capture_output=True, text=True, check=True
    )
    assert result.stdout.startswith("vprompt ")


def test_sites_prints_the_table(capsys):
    assert main(["sites", "resnet18", "--random-init", "--img-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "family=resnet" in out and "input=3×64×64" in out
    assert "stage.3     nchw    512×2×2" in out and "pre_logits  vector  512" in out


def test_backbones_lists_the_offline_copies(capsys):
    assert main(["backbones"]) == 0
    out = capsys.readouterr().out
    for name in ("offline:efficientnet_lite0", "offline:mobilenet_v2", "offline:dinov2_vits14_imgfocus"):
        assert name in out


def test_errors_are_one_line_and_exit_2(capsys, tmp_path):
    assert main(["sites", "not_a_model_at_all"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vprompt sites: error: unknown backbone 'not_a_model_at_all'")
    assert main(["sites", "resnet18", "--weights", str(tmp_path / "missing.pth")]) == 2
    assert "weights file not found" in capsys.readouterr().err


@pytest.mark.offline_weights
def test_classify_names_imagenet_classes(capsys):
    from vprompt.data import foolbox_imagenet

    path, _ = foolbox_imagenet()[16]  # a dalmatian
    assert main(["classify", "--backbone", "offline:mobilenet_v2", str(path), "--top", "1"]) == 0
    assert "dalmatian" in capsys.readouterr().out


def test_methods_lists_the_registry_in_its_order(capsys):
    """Each method registers itself (``@register_method(order=...)``); the list keeps its order."""
    from vprompt.methods import METHODS

    order = ["linear", "full", "ap", "aap", "vp-pad", "vp-expansive", "vpt-shallow", "vpt-deep", "vapt"]
    order += ["gatevpt", "norm", "bitfit", "lora", "adapter"]
    assert [n for n in METHODS if n in order] == order
    assert main(["methods"]) == 0
    printed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert printed == list(METHODS)
