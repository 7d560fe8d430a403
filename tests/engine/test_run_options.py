"""One assembly of a run's options (``run_options``): layers in order, method options merged, the
method's own flags read once the method is known; one validator for every source (issue #24)."""

from __future__ import annotations

import pytest

from vprompt import recipes
from vprompt.cli.train import method_options
from vprompt.engine.config import TrainConfig, check_config, choices_of
from vprompt.engine.run import as_config, run_options
from vprompt.options import choices


def test_later_layers_win_and_method_options_merge_nested_or_flat(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: ap\nlr: 0.1\nsite: block.3\nshape: channel\n")  # method options written flat
    first = {"epochs": 2, "lr": 0.2, "method_options": {"site": "block.1", "shape": "full"}}
    values = run_options(first, path, {"lr": "0.5"}, method_flags=lambda m: {"site": "block.5"})
    assert (values["epochs"], values["lr"], values["method"]) == (2, 0.5, "ap")
    assert values["method_options"] == {"site": "block.5", "shape": "channel"}  # flags win, then the YAML
    config = as_config(TrainConfig(epochs=3), {"method_options": {"site": "embed"}}, {"epochs": 4})
    assert (config.epochs, config.method_options) == (4, {"site": "embed"})


def test_method_flags_wait_for_the_method_perhaps_the_recipes():
    with pytest.raises(ValueError, match="--method is required"):
        run_options({"lr": 0.1}, method_flags=lambda m: {})
    seen: list[str] = []
    run_options({"recipe": "ap"}, method_flags=lambda m: seen.append(m) or {})
    assert seen == ["ap"]
    with pytest.raises(ValueError, match="unknown method 'nope'; choose one of: linear"):
        run_options({"method": "nope"}, method_flags=lambda m: method_options(m, []))


def test_choices_come_from_the_annotations():
    assert choices_of("optimizer") == ("sgd", "adam", "adamw")
    assert choices_of("interpolation")[:2] == ("bilinear", "bicubic")  # Literal[...] | None
    assert choices_of("lr") == () and choices(int) == ()
    config = TrainConfig(backbone="b", method="m", data="d", optimizer="lamb")  # built in Python
    with pytest.raises(ValueError, match="option 'optimizer': expected one of sgd, adam, adamw, got 'lamb'"):
        check_config(config)


def test_a_recipe_is_checked_by_the_same_validator():
    assert recipes.check_options({"lr": "1e-2", "epochs": 5.0}, "r.yaml") == {"lr": "1e-2", "epochs": 5.0}
    with pytest.raises(ValueError, match="r.yaml: option 'optimizer': expected one of sgd, adam, adamw"):
        recipes.check_options({"optimizer": "lamb"}, "r.yaml")
    with pytest.raises(ValueError, match="r.yaml: option 'epochs': expected an integer, got 2.5"):
        recipes.check_options({"epochs": 2.5}, "r.yaml")
