"""What split lists say is checked: images stay inside the dataset folder and labels are integers as written.

Every refusal names the list file and the line or entry (``file:line``, ``file [split][index]``,
``file ['<image path>']``).
"""

import json
import os

import pytest

from fakes import CONFIG, write_image
from vprompt.data import DataError, check_dataset, describe, load, preflight, resolve

SIZES = {"train": 4, "val": 2, "trainval": 6}


def _set_line(path, index, text):
    lines = path.read_text().splitlines()
    lines[index] = text
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("entry", ["../../../../etc/passwd", "images/../../elsewhere/x.jpg", "/etc/passwd"])
def test_vtab_entry_outside_the_task_folder_is_refused(vtab_root, entry):
    _set_line(vtab_root / "eurosat" / "test.txt", 1, f"{entry} 3")
    expected = os.path.normpath(os.path.join(vtab_root / "eurosat", entry))
    with pytest.raises(DataError) as e:
        load("vtab1k:eurosat", vtab_root, "test", CONFIG)
    message = str(e.value)
    assert message.startswith(f"{vtab_root / 'eurosat' / 'test.txt'}:2: image path ")
    assert f"resolves to {expected}, outside the dataset folder {vtab_root / 'eurosat'}" in message
    assert "allow_outside_root=True" in message and "--images-outside-root" in message
    # data check lists it, the training preflight refuses it
    report = check_dataset("vtab1k:eurosat", vtab_root, splits=["test"])
    assert len(report.problems) == 1 and "test.txt:2: image path" in report.problems[0]
    with pytest.raises(DataError, match=r"test\.txt:2: image path .* outside the dataset folder"):
        preflight("vtab1k:eurosat", vtab_root, ["test"])


def test_outside_images_are_read_when_explicitly_allowed(vtab_root):
    write_image(vtab_root / "elsewhere" / "x.jpg", seed=7)
    _set_line(vtab_root / "eurosat" / "test.txt", 1, "../elsewhere/x.jpg 3")
    with pytest.raises(DataError, match="outside the dataset folder"):
        load("vtab1k:eurosat", vtab_root, "test", None)
    ds = load("vtab1k:eurosat", vtab_root, "test", CONFIG, allow_outside_root=True)
    x, y = ds[1]
    assert x.shape == (3, 32, 32) and y == 3
    assert resolve("vtab1k:eurosat", vtab_root, allow_outside_root=True).allow_outside_root
    assert describe("vtab1k:eurosat", vtab_root, allow_outside_root=True).num_classes == 10
    assert check_dataset("vtab1k:eurosat", vtab_root, splits=["test"], allow_outside_root=True).ok
    info = preflight("vtab1k:eurosat", vtab_root, ["test"], allow_outside_root=True)
    assert info.name == "eurosat"


def test_images_that_are_symlinks_to_another_disk_are_accepted(vtab_root, tmp_path_factory):
    """The check is lexical: a listed path inside the folder may be a symlink to anywhere."""
    other_disk = tmp_path_factory.mktemp("other_disk")
    write_image(other_disk / "real.jpg", seed=3)
    link = vtab_root / "eurosat" / "images" / "test" / "000001.jpg"
    link.unlink()
    link.symlink_to(other_disk / "real.jpg")
    ds = load("vtab1k:eurosat", vtab_root, "test", CONFIG)
    assert ds.samples[1].path == link and ds[1][0].shape == (3, 32, 32)
    assert check_dataset("vtab1k:eurosat", vtab_root, splits=["test"]).ok


def test_fgvc_entry_outside_names_the_json_and_entry(fgvc_root):
    folder = fgvc_root / "OxfordFlower"
    ann = json.loads((folder / "val.json").read_text())
    ann["../../secret.jpg"] = ann.pop(next(iter(ann)))
    (folder / "val.json").write_text(json.dumps(ann))
    describe("fgvc:flowers", fgvc_root)  # the json is well-formed
    with pytest.raises(DataError) as e:
        load("fgvc:flowers", fgvc_root, "val", CONFIG)
    assert str(e.value).startswith(f"{folder / 'val.json'} ['../../secret.jpg']: image path ")
    assert f"resolves to {fgvc_root.parent / 'secret.jpg'}, outside the dataset folder {folder}" in str(
        e.value
    )
    with pytest.raises(DataError, match=r"val\.json \['\.\./\.\./secret\.jpg'\]"):
        load("fgvc:flowers", fgvc_root, "trainval", CONFIG)


def test_coop_entry_outside_names_the_split_and_index(coop_root):
    split_file = coop_root / "eurosat" / "split_zhou_EuroSAT.json"
    data = json.loads(split_file.read_text())
    data["val"][2][0] = "/etc/passwd"
    split_file.write_text(json.dumps(data))
    assert len(load("vp:eurosat", coop_root, "train", CONFIG)) == 6  # other splits are unaffected
    with pytest.raises(DataError, match=r"split_zhou_EuroSAT\.json \[val\]\[2\]: image path '/etc/passwd'"):
        load("vp:eurosat", coop_root, "val", CONFIG)


def test_folder_split_list_entries_stay_in_their_class_folder(tmp_path):
    for cls in ("cat", "dog"):
        for i in range(2):
            write_image(tmp_path / "pets" / cls / f"{i}.png", seed=i)
    write_image(tmp_path / "cat" / "0.png", seed=9)  # outside the dataset, in a folder named like a class
    train = tmp_path / "pets" / "train.txt"
    for entry in ("cat/../../cat/0.png", "/etc/passwd", "../cat/0.png", "cat/.."):
        train.write_text(f"dog/0.png\n{entry}\n")
        with pytest.raises(DataError) as e:
            load("folder:pets", tmp_path, "train", CONFIG, allow_outside_root=True)
        assert str(e.value).startswith(f"{train}:2: {entry!r} is not inside a class folder")
    # a path through another class folder takes the class it really lies in
    train.write_text("cat/../dog/1.png\ncat/./0.png\n")
    ds = load("folder:pets", tmp_path, "trainval", None)  # train is this list less its held-out val
    assert ds.targets == [1, 0]
    assert ds.samples[0].path == tmp_path / "pets" / "dog" / "1.png"


@pytest.mark.parametrize("label", ["²", "2.9", "--3", "3a", "٣", "0x3"])
def test_vtab_label_must_be_ascii_integer(vtab_root, label):
    list_file = vtab_root / "eurosat" / "val200.txt"
    _set_line(list_file, 1, f"images/val200/000001.jpg {label}")
    with pytest.raises(DataError) as e:
        load("vtab1k:eurosat", vtab_root, "val", None)
    assert str(e.value) == f"{list_file}:2: label {label!r} is not an integer"


@pytest.mark.parametrize(("label", "shown"), [(2.9, "2.9"), (True, "true"), ("3", '"3"'), (None, "null")])
def test_coop_label_must_be_json_integer(coop_root, label, shown):
    split_file = coop_root / "eurosat" / "split_zhou_EuroSAT.json"
    data = json.loads(split_file.read_text())
    data["train"][1][1] = label
    split_file.write_text(json.dumps(data))
    with pytest.raises(DataError) as e:
        describe("vp:eurosat", coop_root)
    assert str(e.value) == f"{split_file} [train][1]: label {shown} is not an integer"


def test_coop_rows_and_paths_are_checked(coop_root):
    split_file = coop_root / "eurosat" / "split_zhou_EuroSAT.json"
    data = json.loads(split_file.read_text())
    good = data["test"][0]
    for row, problem in (
        ([7, 0, "AnnualCrop"], "image path 7 is not a non-empty string"),
        ([good[0], 0], 'expected [relpath, label, classname], got ["'),
        ([good[0], 0, 5], "class name 5 is not a string"),
    ):
        data["test"][0] = row
        split_file.write_text(json.dumps(data))
        with pytest.raises(DataError) as e:
            describe("vp:eurosat", coop_root)
        assert str(e.value).startswith(f"{split_file} [test][0]: {problem}")


@pytest.mark.parametrize(("label", "shown"), [(2.9, "2.9"), (False, "false"), ("3", '"3"')])
def test_fgvc_label_must_be_json_integer(fgvc_root, label, shown):
    path = fgvc_root / "OxfordFlower" / "test.json"
    ann = json.loads(path.read_text())
    key = sorted(ann)[2]
    ann[key] = label
    path.write_text(json.dumps(ann))
    with pytest.raises(DataError) as e:
        describe("fgvc:flowers", fgvc_root)
    assert str(e.value) == f"{path} [{key!r}]: label {shown} is not an integer"


def test_unreadable_list_files_are_named(vtab_root, fgvc_root):
    list_file = vtab_root / "eurosat" / "test.txt"
    list_file.write_bytes(b"images/test/000000.jpg 1\n\xff\xfe 2\n")
    with pytest.raises(DataError, match=rf"^{list_file}: not UTF-8 text \(byte 25"):
        load("vtab1k:eurosat", vtab_root, "test", None)
    path = fgvc_root / "OxfordFlower" / "val.json"
    path.write_text('{"a.jpg": 1,')
    with pytest.raises(DataError, match=rf"^{path}: not valid json"):
        describe("fgvc:flowers", fgvc_root)
    path.write_text("[1, 2]")
    with pytest.raises(DataError, match=rf"^{path}: expected a json object"):
        describe("fgvc:flowers", fgvc_root)


def test_the_cli_flag_allows_outside_images_for_data_check_and_train(vtab_root, capsys):
    from vprompt.cli import main
    from vprompt.engine.config import DataOptions
    from vprompt.engine.run_data import plan_data

    write_image(vtab_root / "elsewhere" / "x.jpg", seed=7)
    _set_line(vtab_root / "eurosat" / "test.txt", 1, "../elsewhere/x.jpg 3")
    check = ["data", "check", "vtab1k:eurosat", "--root", str(vtab_root), "--split", "test"]
    assert main(check) != 0
    assert "outside the dataset folder" in "".join(capsys.readouterr())
    assert main([*check, "--images-outside-root"]) == 0
    options = dict(
        data="vtab1k:eurosat", root=str(vtab_root), final=True, train_split="none", test_split="test"
    )
    with pytest.raises(DataError, match="outside the dataset folder"):
        plan_data(DataOptions(**options))
    assert plan_data(DataOptions(**options, images_outside_root=True)).info.name == "eurosat"
