"""Summaries that cannot mislead: suite.md and report.md say at the top what was run, give a group mean only
over a complete group and both VTAB-1k means labelled, and put published numbers beside measured ones only
for the same backbone, method and task."""

from __future__ import annotations

import json

import pytest
import yaml
from tiny_sweeps import FakeTrain, one_thread

from fakes import VTAB_FULL, vtab_root
from tiny_runs import TINY_UNDER_RECIPE
from vprompt.engine.rundir import RunDir
from vprompt.tools import benchmarks, executors, report, sweep
from vprompt.tools.executors import Executor

QUIET = Executor(log=None)
BASE = "vit_base_patch16_224.orig_in21k"
# the VPT paper's full fine-tuning on VTAB-1k, per task (published.yaml), by group
NATURAL = {"caltech101": 87.7, "cifar": 68.9, "dtd": 64.3, "oxford_flowers102": 97.2}
NATURAL |= {"oxford_iiit_pet": 86.9, "svhn": 87.4, "sun397": 38.8}
SPECIALIZED = {"patch_camelyon": 79.7, "eurosat": 95.7, "resisc45": 84.2, "diabetic_retinopathy": 73.9}
STRUCTURED = {"clevr_count": 56.3, "clevr_dist": 58.6, "dmlab": 41.7, "kitti": 65.5, "dsprites_loc": 57.5}
STRUCTURED |= {"dsprites_ori": 46.7, "smallnorb_azi": 25.7, "smallnorb_ele": 29.1}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_thread()


@pytest.fixture(scope="module")
def subset_suite(tmp_path_factory):
    """VPT-deep under the vpt-vtab recipe on 2 of 19 tasks: 30 training and 20 test images, 1 epoch, a
    random-init ViT-Tiny at 32 px (the kind of run whose summary once read "# Suite vtab1k")."""
    tmp = tmp_path_factory.mktemp("subset")
    root = vtab_root(tmp / "data", tasks=("eurosat", "dtd"), sizes=VTAB_FULL, images=10, image_size=8)
    config = {
        **TINY_UNDER_RECIPE,
        "recipe": "vpt-vtab",
        "method": "vpt-deep",
        "num_prompts": 2,
        "root": str(root),
        "train_size": 30,
        "eval_size": 20,
        "epochs": 1,
        "warmup_epochs": 0,
        "batch_size": 16,
        "device": "cpu",
    }
    out = tmp / "suite"
    result = sweep.suite(
        "vtab1k", config, out, datasets=["eurosat", "dtd"], seeds=[3], fixed=True, executor=QUIET
    )
    return out, result


def header_of(text: str) -> str:
    return text.split("\n- ", 1)[1].split("\n\n", 1)[0]


def test_a_suite_on_a_subset_says_so_at_the_top(subset_suite):
    out, result = subset_suite
    text = (out / "suite.md").read_text()
    assert text.startswith("# Suite vtab1k: vpt-deep on vit_tiny_patch16_224, 2 of 19 tasks\n")
    top = header_of(text)
    assert "**Backbone:** `vit_tiny_patch16_224` — **random init: no pretrained weights**" in top
    assert "**Input size:** 32 px" in top and "**Epochs:** 1" in top
    assert "**Images used** (train / val / test): 30 / – / 20" in top  # the subsets actually used
    assert "**Seeds:** 3" in top
    not_run = [t for t in benchmarks.FAMILIES["vtab1k"] if t not in ("dtd", "eurosat")]
    assert f"**Tasks (vtab1k):** 2 of 19 (dtd, eurosat); not run: {', '.join(not_run)}" in top
    # every option that differs from the recipe, with the recipe's value
    assert (
        "**Recipe:** `vpt-vtab` (2 runs; options that differ from it: `backbone` vit_tiny_patch16_224 "
        f"(recipe: {BASE}), `batch_size` 16 (recipe: 128), `epochs` 1 (recipe: 100), `img_size` 32 "
        "(recipe: 224), `method_options.num_prompts` 2 (recipe: 5), `warmup_epochs` 0 (recipe: 10))"
    ) in top
    # no group is complete: no group mean, no VTAB-1k mean
    for label, cell in [
        ("natural mean", "incomplete (1 of 7)"),
        ("specialized mean", "incomplete (1 of 4)"),
        ("structured mean", "incomplete (0 of 8)"),
        ("mean of 19 tasks", "incomplete (2 of 19)"),
        ("mean of the 3 group means", "incomplete (0 of 3 groups complete)"),
    ]:
        assert f"| **{label}** | – | – | {cell} |" in text
        assert (
            result["means"][next(k for k, m in result["means"].items() if m["label"] == label)]["mean"]
            is None
        )
    assert "published" not in text  # a random-init ViT-Tiny has no published numbers


def test_the_report_on_the_same_runs_says_the_same(subset_suite, tmp_path):
    out, _ = subset_suite
    report.write_report([out], tmp_path)
    text = (tmp_path / "report.md").read_text()
    suite_top = header_of((out / "suite.md").read_text())
    assert header_of(text.split("Accuracy in %: mean ± sample std over the runs (n).\n", 1)[1]) == suite_top
    means = text.split("## vtab1k means (test)\n")[1].split("\n## ")[0]
    assert (
        "| natural mean | specialized mean | structured mean | mean of 19 tasks | mean of the 3 group means |"
        in means
    )
    assert (
        "| vpt-deep | vit_tiny_patch16_224 | incomplete (1 of 7) | incomplete (1 of 4) | incomplete (0 of 8) "
        "| incomplete (2 of 19) | incomplete (0 of 3 groups complete) |"
    ) in means
    assert "No configuration here has a published number" in text
    assert f"{BASE}: full, linear, vpt-deep, vpt-shallow on fgvc, vtab1k" in text


def test_a_suite_with_a_failed_task_has_no_mean_for_its_group(tmp_path, monkeypatch):
    """All 4 specialized tasks asked for, one fails: no specialized mean; the others' means are whole."""
    monkeypatch.setattr(executors, "train", FakeTrain(lambda c: fail_on(c, "vtab1k:resisc45")))
    specialized = benchmarks.VTAB_GROUPS["specialized"]
    config = {**TINY_UNDER_RECIPE, "lr": 0.1, "method": "linear", "root": str(tmp_path / "data")}
    result = sweep.suite(
        "vtab1k", config, tmp_path, datasets=specialized, seeds=1, fixed=True, executor=QUIET
    )
    assert result["means"]["specialized"] == {
        "label": "specialized mean",
        "mean": None,
        "have": 3,
        "of": 4,
        "complete": False,
    }
    text = (tmp_path / "suite.md").read_text()
    assert "asked for but without a test accuracy: resisc45" in text
    assert "| **specialized mean** | – | – | incomplete (3 of 4) |" in text
    # the same four tasks, all finished: the group's mean, still no VTAB-1k mean
    monkeypatch.setattr(executors, "train", FakeTrain(lambda c: fail_on(c, None)))
    result = sweep.suite(
        "vtab1k", config, tmp_path / "again", datasets=specialized, seeds=1, fixed=True, executor=QUIET
    )
    assert result["means"]["specialized"]["mean"] == pytest.approx(sum(SPECIALIZED.values()) / 4)
    assert result["means"]["all"]["mean"] is None and result["means"]["groups"]["mean"] is None
    shown = f"{result['means']['specialized']['mean']:.2f}"
    assert f"| **specialized mean** | – | – | {shown} |" in (tmp_path / "again" / "suite.md").read_text()


def fail_on(config, data):
    if config["data"] == data:
        raise RuntimeError("planted failure")
    return {"test_accuracy": SPECIALIZED[config["data"][7:]]}


def write_run(path, data, accuracy, method="full", backbone=BASE, random_init=False, seed=0):
    config = {
        "backbone": backbone,
        "random_init": random_init,
        "method": method,
        "method_options": {},
        "data": data,
        "final": True,
        "seed": seed,
        "img_size": 224,
        "epochs": 100,
    }
    run = RunDir(path)
    run.write_config(config)
    summary = {**config, "test_accuracy": accuracy, "sizes": {"train": 1000, "test": 500}}
    run.write_summary(summary | {"trainable_parameters": 10, "trainable_parameters_without_head": 0})


@pytest.mark.numerics
def test_a_complete_vtab_set_gets_both_means_each_labelled(tmp_path):
    """Result files written directly: the published full fine-tuning values + 0.5 on all 19 tasks."""
    tasks = benchmarks.FAMILIES["vtab1k"]
    published = NATURAL | SPECIALIZED | STRUCTURED
    assert published == {
        p.data[7:]: p.value for p in benchmarks.published() if p.method == "full" and p.data[:6] == "vtab1k"
    }
    for task in tasks:
        write_run(tmp_path / "runs" / task, f"vtab1k:{task}", published[task] + 0.5)
    # by hand: the group sums are 531.2, 333.5 and 381.1
    natural, specialized, structured = 531.2 / 7, 333.5 / 4, 381.1 / 8
    of_tasks, of_groups = (531.2 + 333.5 + 381.1) / 19, (natural + specialized + structured) / 3
    assert (
        round(of_tasks, 2) == 65.57 and round(of_groups, 2) == 68.97
    )  # the paper prints 68.96, see the data file
    means = benchmarks.means("vtab1k", published)
    assert means["all"]["mean"] == pytest.approx(of_tasks, abs=1e-12)
    assert means["groups"]["mean"] == pytest.approx(of_groups, abs=1e-12)
    assert (
        means["all"]["label"] == "mean of 19 tasks"
        and means["groups"]["label"] == "mean of the 3 group means"
    )

    report.write_report([tmp_path / "runs"], tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    table = text.split("## vtab1k means (test)\n")[1].split("\n## ")[0]
    # the tables show these means (checked against the hand-computed ones above and here)
    measured = benchmarks.means("vtab1k", {t: v + 0.5 for t, v in published.items()})
    assert [m["mean"] for m in measured.values()] == pytest.approx(
        [natural + 0.5, specialized + 0.5, structured + 0.5, of_tasks + 0.5, of_groups + 0.5], abs=1e-12
    )
    measured, paper = [m["mean"] for m in measured.values()], [m["mean"] for m in means.values()]
    assert f"| full | {BASE} | " + " | ".join(f"{v:.2f}" for v in measured) + " |" in table
    assert (
        f'| ↳ published: Jia et al., "Visual Prompt Tuning", ECCV 2022, Table 1 | {BASE} | '
        + " | ".join(f"{v:.2f}" for v in paper)
        + " |"
    ) in table
    assert "| incomplete" not in table
    beside = text.split("## Published numbers beside the measured ones\n")[1].split("\n## ")[0]
    assert f"| vtab1k:cifar | {BASE} | full | 69.40 | 68.90 | Jia et al." in beside
    assert beside.count("| full |") == 19


def test_a_published_number_only_for_the_same_backbone_method_and_task(tmp_path):
    write_run(tmp_path / "a", "vtab1k:dtd", 70.0)  # matches
    write_run(tmp_path / "b", "vtab1k:dtd", 50.0, method="vapt")  # no published vapt values
    write_run(tmp_path / "c", "vtab1k:eurosat", 90.0, backbone="vit_base_patch16_224.augreg_in21k")
    write_run(tmp_path / "d", "fgvc:cub", 80.0, random_init=True)  # not the paper's pretrained weights
    write_run(tmp_path / "e", "synthetic:4x32", 60.0)  # outside the benchmarks
    result = report.write_report([tmp_path], tmp_path / "report")
    published = {(r["data"], r["method"]): r["published"] for r in result["rows"]}
    assert published == {
        ("vtab1k:dtd", "full"): 64.3,
        ("vtab1k:dtd", "vapt"): None,
        ("vtab1k:eurosat", "full"): None,
        ("fgvc:cub", "full"): None,
        ("synthetic:4x32", "full"): None,
    }
    beside = (tmp_path / "report" / "report.md").read_text().split("## Published numbers beside")[1]
    rows = [
        line for line in beside.split("\n## ")[0].splitlines() if line.startswith("| ") and "---" not in line
    ]
    assert len(rows) == 2 and rows[1].startswith(f"| vtab1k:dtd | {BASE} | full | 70.00 | 64.30 |")


def test_a_complete_suite_shows_the_published_column_and_both_means(tmp_path, monkeypatch):
    """sweep suite on all 19 tasks (training faked): the published column beside the measured one."""
    values = {
        p.data.split(":")[1]: p.value
        for p in benchmarks.published()
        if (p.method, p.data[:6]) == ("full", "vtab1k")
    }
    monkeypatch.setattr(
        executors, "train", FakeTrain(lambda c: {"test_accuracy": values[c["data"][7:]] - 1.0})
    )
    config = {**TINY_UNDER_RECIPE, "backbone": BASE, "random_init": False, "lr": 0.1, "method": "full"}
    result = sweep.suite(
        "vtab1k", {**config, "root": str(tmp_path)}, tmp_path, seeds=1, fixed=True, executor=QUIET
    )
    text = (tmp_path / "suite.md").read_text()
    assert text.startswith(f"# Suite vtab1k: full on {BASE}, 19 of 19 tasks\n")
    assert "| dataset | lr | weight decay | test accuracy (%) | published (%) | seeds |" in text
    assert "| cifar | 0.1 | 0 | 67.90 | 68.90 | 1 |" in text
    assert "| **mean of 19 tasks** | – | – | 64.57 | 65.57 |" in text
    assert "| **mean of the 3 group means** | – | – | 67.97 | 68.97 |" in text
    assert result["published"]["cifar"] == {
        "value": 68.9,
        "source": 'Jia et al., "Visual Prompt Tuning", ECCV 2022, Table 1',
    }
    assert json.loads((tmp_path / "suite.json").read_text())["means"]["groups"]["mean"] == pytest.approx(
        (531.2 / 7 + 333.5 / 4 + 381.1 / 8) / 3 - 1.0
    )


# ------------------------------------------------------------------------------------ the data file
def test_the_published_file_is_cited_data():
    entries = benchmarks.published()
    text = benchmarks.published_path().read_text()
    data = yaml.safe_load(text)
    assert set(data) == {"papers", "results"}
    for block in data["results"]:
        assert set(block) == benchmarks.RESULT_KEYS and block["paper"] in data["papers"]
        assert block["table"] and block["where"] and block["checked"]
    for p in entries:
        assert p.citation and p.table and p.backbone and 0 <= p.value <= 100 and benchmarks.family_of(p.data)
    # every set is whole, and its means are the ones the papers print (VTAB-1k: mean of 19 tasks)
    printed = {
        ("vtab1k", "full"): 65.57,
        ("vtab1k", "linear"): 52.94,
        ("vtab1k", "vpt-shallow"): 64.85,
        ("vtab1k", "vpt-deep"): 69.43,
        ("fgvc", "full"): 88.54,
        ("fgvc", "vpt-deep"): 89.10,  # the paper prints 89.11, the mean before rounding
    }
    for (family, method), mean in printed.items():
        values = {
            p.data.split(":")[1]: p.value for p in entries if p.method == method and p.data.startswith(family)
        }
        assert set(values) == set(benchmarks.FAMILIES[family])
        assert round(benchmarks.means(family, values)["all"]["mean"], 2) == mean


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.pop("papers"), "exactly 'papers' and 'results'"),
        (lambda d: d["results"][0].pop("checked"), "expected exactly the keys"),
        (lambda d: d["results"][0].update(paper="nope"), "unknown paper 'nope'"),
        (lambda d: d["results"][0].update(table=""), "table must be a non-empty string"),
        (lambda d: d["results"][0].update(method="nope"), "unknown method 'nope'"),
        (lambda d: d["results"][0].update(benchmark="imagenet"), "unknown benchmark 'imagenet'"),
        (lambda d: d["results"][0]["values"].update(mnist=1.0), "vtab1k has no task 'mnist'"),
        (lambda d: d["results"][0]["values"].update(cifar=168.9), "not an accuracy in %"),
        (lambda d: d["results"][0]["values"].update(cifar=True), "not an accuracy in %"),
        (lambda d: d["results"][0].update(checked=[]), "checked lists"),
        (lambda d: d["results"].append(dict(d["results"][0])), "a second value for"),
    ],
)
def test_a_bad_published_file_is_one_clear_error(change, message):
    data = yaml.safe_load(benchmarks.published_path().read_text())
    change(data)
    with pytest.raises(ValueError, match=message):
        benchmarks.parse_published(data, "published.yaml")


def test_find_published_matches_exactly():
    assert benchmarks.find_published(BASE, "vpt-deep", "vtab1k:DTD ").value == 65.8
    assert benchmarks.find_published(BASE, "vpt-deep", "fgvc:cars").value == 83.6
    assert benchmarks.find_published(BASE, "vpt-deep", "vtab1k:dtd", random_init=True) is None
    assert benchmarks.find_published("vit_base_patch16_224", "vpt-deep", "vtab1k:dtd") is None
    assert benchmarks.find_published(BASE, "vapt", "vtab1k:dtd") is None
    assert benchmarks.find_published(BASE, "full", "vp:cifar10") is None
    with pytest.raises(ValueError, match="vtab1k has no task nope"):
        benchmarks.means("vtab1k", {"nope": 1.0})
