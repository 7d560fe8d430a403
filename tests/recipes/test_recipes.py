"""Recipes as data: every shipped recipe loads, cites its sources, sets only what the engine supports;
explicit options win; runs record the recipe; sweeps take its grid and seeds."""

from __future__ import annotations

import pytest
import yaml

import vprompt
from tiny_runs import TINY_UNDER_RECIPE as TINY
from vprompt import recipes
from vprompt.cli import main
from vprompt.engine.config import check_config, make_config
from vprompt.engine.run import as_config
from vprompt.engine.rundir import RunDir
from vprompt.methods import METHODS, method_config
from vprompt.tools import sweep

SHIPPED = [
    "ap",
    "bahng-vp",
    "ilm-vp",
    "ilm-vp-full",
    "ilm-vp-linear",
    "peft-baselines",
    "vapt-fgvc",
    "vapt-vtab",
    "vpt-fgvc",
    "vpt-full-fgvc",
    "vpt-full-vtab",
    "vpt-linear-fgvc",
    "vpt-linear-vtab",
    "vpt-vtab",
]


def test_the_shipped_recipes():
    assert recipes.names() == SHIPPED
    for name in SHIPPED:
        recipe = recipes.load(name)
        assert recipe.name == name and recipe.summary and recipe.paper
        assert recipe.sources and all(s["repo"] and s["file"] and s.get("gives") for s in recipe.sources)
        assert all(m in METHODS for m in recipe.methods), name
        for method in recipe.methods:  # every value passes the engine's checks
            values = recipe.values(method, "vtab1k:dtd")
            config = make_config({**values, "backbone": "b", "data": "d", "method_options": {}})
            check_config(config)


@pytest.mark.parametrize("name", SHIPPED)
def test_recipe_method_options_are_the_methods_own(name):
    recipe = recipes.load(name)
    for method, options in recipe.methods.items():
        config = method_config(method, **options)  # unknown option: an error here
        assert {k: getattr(config, k) for k in options} == options


def test_the_papers_values():
    vtab, fgvc = recipes.load("vpt-vtab"), recipes.load("vpt-fgvc")
    for r in (vtab, fgvc):
        v = r.values("vpt-deep")
        assert (v["optimizer"], v["lr_scale"], v["schedule"], v["warmup_epochs"], v["epochs"]) == (
            "sgd",
            True,
            "cosine",
            10,
            100,
        )
        assert v["batch_size"] == 128 and v["weight_decay"] == 1e-4 and v["head_init"] == "vpt"
        assert r.tune["wds"] == [0.01, 0.001, 0.0001, 0.0] and r.tune["seeds"] == [42, 44, 82, 100, 800]
    assert vtab.tune["lrs"] == [50, 25, 10, 5, 2.5, 1, 0.5, 0.25, 0.1, 0.05]
    assert fgvc.tune["lrs"] == vtab.tune["lrs"][:-1]  # FGVC: the same without 0.05
    assert vtab.values("vpt-deep")["method_options"] == {"num_prompts": 5, "dropout": 0.1}
    assert vtab.values("vpt-shallow")["method_options"] == {"num_prompts": 5, "dropout": 0.0}
    vapt = recipes.load("vapt-fgvc")
    assert vapt.values("vapt")["batch_size"] == 64
    assert vapt.values("vapt")["method_options"]["prompt_dropout"] == 0.1
    per_dataset = {
        d: (vapt.values(None, d)["lr"], vapt.values(None, d)["weight_decay"]) for d in vapt.datasets
    }
    assert per_dataset == {
        "fgvc:cub": (50, 1e-3),
        "fgvc:nabirds": (50, 1e-4),
        "fgvc:flowers": (50, 1e-3),
        "fgvc:dogs": (25, 1e-3),
        "fgvc:cars": (10, 1e-4),
    }
    ilm = recipes.load("ilm-vp").values()
    assert (ilm["optimizer"], ilm["lr"], ilm["epochs"], ilm["lr_milestones"]) == (
        "adam",
        0.01,
        200,
        [0.5, 0.72],
    )
    assert ilm["method_options"] == {"mapping": "ilm", "mapping_interval": 1}
    assert recipes.load("ilm-vp").values(None, "vp:dtd")["batch_size"] == 64
    assert recipes.load("ilm-vp-linear").values()["lr"] == 0.1
    full = recipes.load("ilm-vp-full").values()
    assert (full["lr"], full["weight_decay"], full["schedule"]) == (1e-4, 5e-4, "cosine")
    bahng = recipes.load("bahng-vp").values()
    assert (bahng["lr"], bahng["warmup_steps"], bahng["epochs"], bahng["preprocess"]) == (
        40,
        1000,
        1000,
        "resize-crop",
    )
    assert bahng["method_options"] == {"width": 30, "mapping": "first"}


def test_explicit_options_win_and_the_method_is_checked():
    config = as_config({"recipe": "vpt-vtab", "method": "vpt-deep", "lr": 0.5, "epochs": 3}, {})
    assert config.lr == 0.5 and config.epochs == 3  # given
    assert config.batch_size == 128 and config.head_init == "vpt"  # the recipe's
    assert config.method_options == {"num_prompts": 5, "dropout": 0.1}
    given = as_config({"recipe": "vpt-vtab", "method": "vpt-deep", "method_options": {"dropout": 0.0}}, {})
    assert given.method_options == {"num_prompts": 5, "dropout": 0.0}
    assert as_config({"recipe": "ilm-vp"}, {}).method == "vp-expansive"  # its only method
    with pytest.raises(ValueError, match="is for vpt-deep, vpt-shallow, not 'vapt'"):
        as_config({"recipe": "vpt-vtab", "method": "vapt"}, {})
    with pytest.raises(ValueError, match="several methods"):
        as_config({"recipe": "vpt-vtab"}, {})
    with pytest.raises(ValueError, match="unknown recipe 'vpt'; choose one of: ap, bahng-vp"):
        as_config({"recipe": "vpt", "method": "vpt-deep"}, {})
    # per-dataset values, under explicit ones
    cub = as_config({"recipe": "vapt-fgvc", "data": "fgvc:cub"}, {})
    assert (cub.lr, cub.weight_decay) == (50, 1e-3)
    assert as_config({"recipe": "vapt-fgvc", "data": "fgvc:cub", "lr": 1.0}, {}).lr == 1.0


@pytest.mark.parametrize(
    "change, message",
    [
        ({"colour": "red"}, "unknown recipe key"),
        ({"options": {"lr": "fast"}}, "option 'lr': expected a number, got 'fast'"),
        ({"options": {"data": "vtab1k:dtd"}}, "cannot set 'data'"),
        ({"options": {"warmup": 3}}, "cannot set 'warmup'"),
        ({"options": {"schedule": "linear"}}, "option 'schedule': expected one of cosine, multistep"),
        ({"sources": [{"repo": "KMnP/vpt"}]}, "repo and a file"),
        ({"tune": {"lrs": []}}, "non-empty list"),
        ({"tune": {"grid": [1]}}, "unknown tune key"),
        ({"datasets": {"fgvc:cub": {"lrr": 1.0}}}, "cannot set 'lrr'"),
    ],
)
def test_bad_recipes_are_errors(change, message):
    data = {**yaml.safe_load(recipes.text("vpt-vtab")), **change}
    with pytest.raises(ValueError, match=message):
        recipes.parse(data, "test.yaml")


def test_unknown_method_option_in_a_recipe_fails_when_the_method_is_resolved(tmp_path, monkeypatch):
    data = yaml.safe_load(recipes.text("ilm-vp-linear"))
    data["methods"] = {"linear": {"depth": 3}}
    bad = recipes.parse(data, "test.yaml")
    monkeypatch.setattr(recipes, "load", lambda name: bad)
    with pytest.raises(ValueError, match="method 'linear' has no option 'depth'"):
        vprompt.train(**TINY, recipe="ilm-vp-linear", output=tmp_path / "run")


def test_a_run_records_its_recipe(tmp_path):
    out = tmp_path / "run"
    vprompt.train(**TINY, recipe="vpt-vtab", method="vpt-shallow", lr=0.05, warmup_epochs=1, output=out)
    config = RunDir(out).read_config()
    assert config["recipe"] == "vpt-vtab"
    assert (config["optimizer"], config["head_init"], config["schedule_step"]) == ("sgd", "vpt", "epoch")
    assert config["warmup_epochs"] == 1 and config["lr_scale"] is True
    record = config["resolved"]["recipe"]
    assert record["name"] == "vpt-vtab" and record["file"] == "vpt-vtab.yaml"
    assert "KMnP/vpt:tune_vtab.py" in record["sources"]
    assert record["set"] == {
        "optimizer": "sgd",
        "lr_scale": True,
        "weight_decay": 0.0001,
        "schedule": "cosine",
        "schedule_step": "epoch",
        "head_init": "vpt",
        "selection": "final",
        "final_train": "trainval",
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "interpolation": "bilinear",
        "antialias": False,
        "method": "vpt-shallow",
        "method_options.num_prompts": 5,
        "method_options.dropout": 0.0,
    }
    assert record["overridden"] == {
        "backbone": {"recipe": "vit_base_patch16_224.orig_in21k", "used": "vit_tiny_patch16_224"},
        "img_size": {"recipe": 224, "used": 32},
        "warmup_epochs": {"recipe": 10, "used": 1},
        "epochs": {"recipe": 100, "used": 2},
        "batch_size": {"recipe": 128, "used": 16},
    }
    assert config["resolved"]["peak_lr"] == pytest.approx(0.05 * 16 / 256)


def test_sweeps_take_the_recipes_grid_and_seeds(tmp_path):
    base = sweep.base_config({**TINY, "recipe": "vpt-vtab", "method": "vpt-deep"})
    lrs, wds, seeds = sweep.grid(base, None, None, None)
    assert len(lrs) == 10 and len(wds) == 4 and seeds == [42, 44, 82, 100, 800]
    assert sweep.grid(base, [0.1], None, 2) == ([0.1], [0.01, 0.001, 0.0001, 0.0], 2)
    plain = sweep.base_config({**TINY, "method": "linear", "lr": 0.3})
    assert sweep.grid(plain, None, None, None) == ([0.3], [0.0], 5)
    # a suite gives each dataset its own recipe values
    cub = sweep.base_config({**TINY, "recipe": "vapt-fgvc"}, data="fgvc:cub")
    cars = sweep.base_config({**TINY, "recipe": "vapt-fgvc"}, data="fgvc:cars")
    assert (cub["lr"], cars["lr"]) == (50, 10)
    # the command line: the recipe's seeds name the final runs
    out = tmp_path / "sweep"
    args = ["sweep", "tune", "--recipe", "ilm-vp-linear", "--output", str(out), "--lr", "0.1", "--wd", "0"]
    tiny = [
        "--backbone",
        "vit_tiny_patch16_224",
        "--random-init",
        "--img-size",
        "32",
        "--data",
        "synthetic:4x32",
    ]
    tiny += ["--epochs", "2", "--batch-size", "16", "--no-progress"]
    assert main(args + tiny) == 0
    assert sorted(p.name for p in (out / "final").iterdir()) == ["seed7"]
    result = yaml.safe_load((out / "result.json").read_text())
    assert [f["seed"] for f in result["final"]] == [7] and result["chosen"]["lr"] == 0.1
    run = RunDir(out / "final" / "seed7").read_config()
    assert (run["optimizer"], run["schedule"], run["lr_milestones"]) == ("adam", "multistep", [0.5, 0.72])
    assert run["resolved"]["recipe"]["set"]["schedule_step"] == "epoch"


def test_vprompt_recipes_lists_and_shows(capsys):
    assert main(["recipes"]) == 0
    listing = capsys.readouterr().out
    for name in SHIPPED:
        assert name in listing
    assert "vpt-deep, vpt-shallow" in listing
    assert main(["recipes", "ilm-vp"]) == 0
    assert capsys.readouterr().out == recipes.text("ilm-vp")
    assert main(["recipes", "nope"]) == 2
    assert "unknown recipe 'nope'" in capsys.readouterr().err


def test_a_recipe_warmup_longer_than_the_run_names_the_recipe(tmp_path, capsys):
    with pytest.raises(ValueError) as caught:
        vprompt.train(**dict(TINY, epochs=3), recipe="vapt-vtab", output=tmp_path / "run")
    assert str(caught.value) == (
        "warmup_epochs 10 is longer than the run (epochs 3); warmup_epochs 10 comes from recipe vapt-vtab: "
        "override it with --warmup-epochs"
    )
    assert not (tmp_path / "run").exists()
    args = [
        "train",
        "--recipe",
        "vapt-vtab",
        "--epochs",
        "3",
        "--backbone",
        TINY["backbone"],
        "--random-init",
    ]
    assert main([*args, "--data", TINY["data"], "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "comes from recipe vapt-vtab" in err and "Traceback" not in err
    check_config(as_config({**TINY, "recipe": "vapt-vtab", "epochs": 3, "warmup_epochs": 1}, {}))


def test_a_recipe_value_that_does_not_fit_the_input_size_names_the_recipe_and_option(tmp_path):
    """bahng-vp's 30-px vp-pad border cannot fit a 32-px input: refused, naming where 30 comes from."""
    from vprompt.engine.run import build_model
    from vprompt.methods import MethodNotApplicable

    with pytest.raises(MethodNotApplicable) as caught:
        vprompt.train(**TINY, recipe="bahng-vp", output=tmp_path / "run")
    assert str(caught.value).startswith("vp-pad width=30 is out of range: it must be from 1 to 15")
    assert str(caught.value).endswith("; width 30 comes from recipe bahng-vp: override it with --width")
    config = as_config({**TINY, "recipe": "bahng-vp", "method_options": {"width": 4}}, {})
    assert build_model(config, 10).method.width == 4  # overridden: it fits


IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
#: recipe → (final training split, normalisation, interpolation, antialias), from the official code
PROTOCOL = {
    "vpt-vtab": ("trainval", IMAGENET, "bilinear", False),  # train.py: vtab- → trainval; tf.image.resize
    "vapt-vtab": ("trainval", IMAGENET, "bilinear", False),
    "vpt-linear-vtab": ("trainval", IMAGENET, "bilinear", False),
    "vpt-full-vtab": ("trainval", IMAGENET, "bilinear", False),
    "vpt-fgvc": ("train", IMAGENET, "bilinear", True),  # train.py: train.json alone; torchvision on PIL
    "vapt-fgvc": ("train", IMAGENET, "bilinear", True),  # DATA.FULL_TRAIN False
    "vpt-linear-fgvc": ("train", IMAGENET, "bilinear", True),
    "vpt-full-fgvc": ("train", IMAGENET, "bilinear", True),
    "ilm-vp": ("train", IMAGENET, "bilinear", True),  # CoOp's train split; torchvision Resize
    "ilm-vp-linear": ("train", IMAGENET, "bilinear", True),
    "ilm-vp-full": ("train", IMAGENET, "bilinear", True),
    "bahng-vp": ("train", IMAGENET, "bilinear", True),  # CIFAR100(train=True): the whole training set
    "ap": ("trainval", {}, None, None),  # vprompt's own protocol: the backbone's normalisation
    "peft-baselines": ("trainval", {}, None, None),
}


@pytest.mark.parametrize("name", SHIPPED)
def test_each_recipe_sets_the_final_split_and_the_input_pipeline(name):
    recipe = recipes.load(name)
    values = recipe.values(next(iter(recipe.methods)))
    final, norm, interpolation, antialias = PROTOCOL[name]
    assert values["final_train"] == final
    assert {k: values[k] for k in ("mean", "std") if k in values} == norm
    assert values.get("interpolation") == interpolation and values.get("antialias") == antialias


def test_recipes_without_official_code_say_so_and_name_their_reasons():
    for name in ("ap", "peft-baselines"):
        recipe = recipes.load(name)
        assert "no official" in recipe.summary and "no official" in recipe.paper.lower()
        assert recipe.notes[0].startswith("No official code")
        assert any("never selects on the test split" in n for n in recipe.notes)
    ap = recipes.load("ap")
    assert ap.methods == {"ap": {"shape": "full"}} and "site" not in ap.methods["ap"]  # chosen by the sweep
    assert any(n.startswith("Step 1, the site - vprompt sweep layers") for n in ap.notes)
    assert recipes.load("peft-baselines").methods.keys() == {"norm", "bitfit", "lora", "adapter"}


def test_the_notes_on_prompt_length_ties_and_test_selection():
    for name in ("vpt-vtab", "vpt-fgvc"):
        notes = " ".join(recipes.load(name).notes)
        assert "num_prompts 5 is the official default" in notes and "1, 5, 10, 50, 100, 200" in notes
    vapt = " ".join(recipes.load("vapt-vtab").notes)
    assert "a tie keeps the larger lr" in vapt  # tune_vtab.py: lr from the largest down, strict >
    assert "keeps the smaller lr" in " ".join(recipes.load("vpt-vtab").notes)  # find_best_lrwd
    fgvc = recipes.load("vapt-fgvc").notes
    assert sum(n.startswith("Selection on test - the official tune_fgvc.py") for n in fgvc) == 1
    for name in ("ilm-vp", "ilm-vp-linear", "ilm-vp-full", "bahng-vp"):
        assert any("best test epoch" in n and "never selects on test" in n for n in recipes.load(name).notes)


def test_vprompt_recipes_ap_works(capsys):
    assert main(["recipes", "ap"]) == 0
    assert capsys.readouterr().out == recipes.text("ap")
