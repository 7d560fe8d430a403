"""VTAB-1k preparation: the official split slices and label derivations (known answers), and the real
conversion code driven by a fake TFDS reader (counts, resume, atomic folders, manual downloads)."""

import json

import numpy as np
import pytest
from PIL import Image
from vtab_fakes import SPLIT_COLOUR, FakeReader

from vprompt.cli import main
from vprompt.data import check_dataset
from vprompt.data.prepare import VTAB1K, prepare_vtab1k
from vprompt.data.prepare import convert as convert_module
from vprompt.data.prepare.convert import MARKER, PARTIAL
from vprompt.data.prepare.vtab1k import (
    bin_index,
    clevr_count,
    clevr_distance,
    kitti_vehicle_distance,
)
from vprompt.data.sources import VTAB_TASKS

# TFDS split sizes of the versions task_adaptation reads (the TFDS catalogue)
TFDS_SIZES = {
    "caltech101": {"train": 3060, "test": 6084},
    "cifar": {"train": 50000, "test": 10000},
    "dtd": {"train": 1880, "validation": 1880, "test": 1880},
    "oxford_flowers102": {"train": 1020, "validation": 1020, "test": 6149},
    "oxford_iiit_pet": {"train": 3680, "test": 3669},
    "svhn": {"train": 73257, "test": 26032, "extra": 531131},
    "sun397": {"train": 76128, "validation": 10875, "test": 21750},
    "patch_camelyon": {"train": 262144, "validation": 32768, "test": 32768},
    "eurosat": {"train": 27000},
    "resisc45": {"train": 31500},
    "diabetic_retinopathy": {"train": 35126, "validation": 10906, "test": 42670},
    "clevr_count": {"train": 70000, "validation": 15000, "test": 15000},
    "clevr_dist": {"train": 70000, "validation": 15000, "test": 15000},
    "dmlab": {"train": 65550, "validation": 22628, "test": 22735},
    "kitti": {"train": 6347, "validation": 423, "test": 711},
    "dsprites_loc": {"train": 737280},
    "dsprites_ori": {"train": 737280},
    "smallnorb_azi": {"train": 24300, "test": 24300},
    "smallnorb_ele": {"train": 24300, "test": 24300},
}
# (val200, test) of the official definitions, worked out by hand from the task_adaptation files
EXPECTED = {
    "caltech101": (("train", 2754, 2954), ("test", 0, 6084)),
    "cifar": (("train", 45000, 45200), ("test", 0, 10000)),
    "dtd": (("validation", 0, 200), ("test", 0, 1880)),
    "oxford_flowers102": (("validation", 0, 200), ("test", 0, 6149)),
    "oxford_iiit_pet": (("train", 2944, 3144), ("test", 0, 3669)),
    "svhn": (("train", 65931, 66131), ("test", 0, 26032)),
    "sun397": (("validation", 0, 200), ("test", 0, 21750)),
    "patch_camelyon": (("validation", 0, 200), ("test", 0, 32768)),
    "eurosat": (("train", 16200, 16400), ("train", 21600, 27000)),
    "resisc45": (("train", 18900, 19100), ("train", 25200, 31500)),
    "diabetic_retinopathy": (("validation", 0, 200), ("test", 0, 42670)),
    "clevr_count": (("train", 63000, 63200), ("validation", 0, 15000)),
    "clevr_dist": (("train", 63000, 63200), ("validation", 0, 15000)),
    "dmlab": (("validation", 0, 200), ("test", 0, 22735)),
    "kitti": (("validation", 0, 200), ("test", 0, 711)),
    "dsprites_loc": (("train", 589824, 590024), ("train", 663552, 737280)),
    "dsprites_ori": (("train", 589824, 590024), ("train", 663552, 737280)),
    "smallnorb_azi": (("test", 0, 200), ("test", 12150, 24300)),
    "smallnorb_ele": (("test", 0, 200), ("test", 12150, 24300)),
}


def test_all_19_tasks_are_defined_with_vprompts_class_counts():
    assert list(VTAB1K) == list(VTAB_TASKS)
    assert {t.name: t.num_classes for t in VTAB1K.values()} == VTAB_TASKS
    assert {t.name for t in VTAB1K.values() if t.manual} == {"resisc45", "diabetic_retinopathy"}
    assert VTAB1K["kitti"].tfds == "kitti:3.1.0" and VTAB1K["dmlab"].tfds == "dmlab:2.0.1"
    assert VTAB1K["cifar"].tfds == "cifar100:3.*.*" and VTAB1K["sun397"].tfds == "sun397/tfds:4.*.*"


@pytest.mark.parametrize("name", list(VTAB1K))
def test_official_slices(name):
    slices = VTAB1K[name].slices(TFDS_SIZES[name])
    val, test = EXPECTED[name]
    assert slices["train800"] == [("train", 0, 800)]
    assert slices["val200"] == [val]
    assert slices["train800val200"] == [("train", 0, 800), val]
    assert slices["test"] == [test]


def test_slices_refuse_splits_too_small_or_missing():
    with pytest.raises(ValueError, match=r"train\[0:800\].*has 500"):
        VTAB1K["dtd"].slices({"train": 500, "validation": 500, "test": 10})
    with pytest.raises(ValueError, match="no split validation"):
        VTAB1K["dtd"].slices({"train": 1000, "test": 10})


def test_clevr_count_is_objects_minus_three():
    assert [clevr_count({"objects": {"size": np.zeros(n)}}) for n in (3, 4, 10)] == [0, 1, 7]


def test_bins_are_strict_lower_edges():
    edges = (0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0)
    assert [bin_index(v, edges) for v in (0.1, 7.99, 8.0, 8.01, 9.0, 9.7, 10.5, 150.0)] == [
        0,
        0,
        0,
        1,
        2,
        4,
        5,
        6,
    ]
    with pytest.raises(ValueError, match="below the first bin edge"):
        bin_index(0.0, edges)


def test_clevr_distance_bins_the_closest_depth():
    def ex(*depths):
        coords = np.zeros((len(depths), 3), np.float32)
        coords[:, 2] = depths
        return {"objects": {"pixel_coords": coords}}

    assert clevr_distance(ex(12.0, 8.2, 9.7)) == 1  # closest 8.2: in (8, 8.5]
    assert clevr_distance(ex(7.5, 30.0)) == 0
    assert clevr_distance(ex(9.25)) == 3  # (9, 9.5]
    assert clevr_distance(ex(11.0, 10.5)) == 5


def test_kitti_bins_the_closest_vehicle_and_ignores_other_objects():
    def ex(types, depths):
        loc = np.zeros((len(types), 3), np.float32)
        loc[:, 2] = depths
        return {"objects": {"type": np.array(types), "location": loc}}

    assert kitti_vehicle_distance(ex([0, 3], [15.0, 2.0])) == 1  # the car at 15; the pedestrian at 2 ignored
    assert kitti_vehicle_distance(ex([1, 2], [30.0, 5.0])) == 0  # van 30, truck 5 → 5 ≤ 8
    assert kitti_vehicle_distance(ex([0], [20.0])) == 1  # 20 is not above 20
    assert kitti_vehicle_distance(ex([0], [25.0])) == 2
    assert kitti_vehicle_distance(ex([4, 5], [3.0, 4.0])) == 3  # no vehicle: the 1000 sentinel
    assert kitti_vehicle_distance(ex([], [])) == 3


def test_dsprites_bins_32_positions_and_40_orientations_into_16():
    loc, ori = VTAB1K["dsprites_loc"].label, VTAB1K["dsprites_ori"].label
    assert [loc({"label_x_position": x}) for x in (0, 1, 2, 3, 30, 31)] == [0, 0, 1, 1, 15, 15]
    assert [ori({"label_orientation": o}) for o in (0, 2, 3, 4, 5, 37, 39)] == [0, 0, 1, 1, 2, 14, 15]


def test_smallnorb_reads_azimuth_and_elevation_and_plain_tasks_the_label():
    ex = {"label_azimuth": np.int64(17), "label_elevation": np.int64(8), "label": np.int64(4)}
    assert VTAB1K["smallnorb_azi"].label(ex) == 17 and VTAB1K["smallnorb_ele"].label(ex) == 8
    assert VTAB1K["diabetic_retinopathy"].label(ex) == 4 and VTAB1K["dmlab"].label(ex) == 4


def test_images_become_rgb_uint8_dsprites_scaled_to_255():
    binary = np.zeros((4, 4, 1), np.uint8)
    binary[0, 0] = 1
    rgb = VTAB1K["dsprites_loc"].image({"image": binary})
    assert rgb.shape == (4, 4, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == [255, 255, 255] and rgb[1, 1].tolist() == [0, 0, 0]
    grey = np.arange(16, dtype=np.uint8).reshape(4, 4, 1)
    tiled = VTAB1K["smallnorb_azi"].image({"image": grey})
    assert (tiled == grey).all() and tiled.shape == (4, 4, 3)


# ------------------------------------------------------------------- the conversion, on a fake TFDS
SMALL = {
    "dtd": {"train": 900, "validation": 210, "test": 7},
    "eurosat": {"train": 1500},  # val200 = train[900:1100], test = train[1200:1500]
    "clevr_count": {
        "train": 2100,
        "validation": 9,
        "test": 4,
    },  # val200 = train[1890:2090], test = validation
    "smallnorb_azi": {"train": 820, "test": 420},  # val200 = test[:200], test = test[210:420]
}


def fakes(log, **options):
    readers = {}

    def reader(spec, tfds_dir):
        task = next(t for t in VTAB1K.values() if t.tfds == spec and t.name in SMALL)
        readers[task.name] = FakeReader(task, SMALL[task.name], log=log, **options.get(task.name, {}))
        return readers[task.name]

    return reader, readers


def where_from(task_dir, line):
    """(split colour, TFDS index, label) of one list line, read back from the written JPEG."""
    rel, label = line.rsplit(maxsplit=1)
    pixels = np.asarray(Image.open(task_dir / rel).convert("L")).astype(int)
    split, hi, lo = (int(pixels[4, 8 * b + 4]) for b in range(3))
    colour = min(SPLIT_COLOUR.values(), key=lambda c: abs(c - split))
    return colour, round(hi / 4) * 64 + round(lo / 4), int(label)


def test_prepare_writes_the_official_slices_and_passes_the_check(tmp_path):
    log = []
    reader, _ = fakes(log)
    outcomes = prepare_vtab1k(tmp_path, list(SMALL), reader=reader, progress=False, log=lambda m: None)
    assert [(o.task, o.status) for o in outcomes] == [(t, "prepared") for t in VTAB1K if t in SMALL]
    assert not (tmp_path / PARTIAL).exists()
    sizes = {"dtd": 7, "eurosat": 300, "clevr_count": 9, "smallnorb_azi": 210}
    for task, n_test in sizes.items():
        lines = {
            s: (tmp_path / task / f"{s}.txt").read_text().splitlines() for s in ("train800", "val200", "test")
        }
        assert [len(lines[s]) for s in lines] == [800, 200, n_test]
        trainval = (tmp_path / task / "train800val200.txt").read_text().splitlines()
        assert trainval == lines["train800"] + lines["val200"]
        report = check_dataset(f"vtab1k:{task}", tmp_path)  # every image decoded
        assert report.ok, report.summary()
        assert [s.size for s in report.splits] == [800, 200, 1000, n_test]
        record = json.loads((tmp_path / task / MARKER).read_text())
        assert record["written"] == {"train800": 800, "val200": 200, "test": n_test, "train800val200": 1000}
    # which TFDS examples ended up where (the colour of each written image says where it came from)
    d = tmp_path / "eurosat"
    assert where_from(d, (d / "train800.txt").read_text().splitlines()[5])[:2] == (SPLIT_COLOUR["train"], 5)
    r, index, label = where_from(d, (d / "val200.txt").read_text().splitlines()[3])
    assert (r, index, label) == (SPLIT_COLOUR["train"], 903, 903 % 10)
    r, index, _ = where_from(d, (d / "test.txt").read_text().splitlines()[0])
    assert (r, index) == (SPLIT_COLOUR["train"], 1200)
    d = tmp_path / "smallnorb_azi"
    assert where_from(d, (d / "val200.txt").read_text().splitlines()[0])[:2] == (SPLIT_COLOUR["test"], 0)
    r, index, label = where_from(d, (d / "test.txt").read_text().splitlines()[1])
    assert (r, index, label) == (SPLIT_COLOUR["test"], 211, 211 % 18)
    d = tmp_path / "clevr_count"
    r, index, label = where_from(d, (d / "val200.txt").read_text().splitlines()[0])
    assert (r, index, label) == (SPLIT_COLOUR["train"], 1890, 1890 % 8)  # label = objects - 3
    assert where_from(d, (d / "test.txt").read_text().splitlines()[2])[:2] == (SPLIT_COLOUR["validation"], 2)
    d = tmp_path / "dtd"
    assert where_from(d, (d / "val200.txt").read_text().splitlines()[7])[:2] == (
        SPLIT_COLOUR["validation"],
        7,
    )


def test_resume_skips_finished_tasks_and_redoes_an_interrupted_one(tmp_path):
    log = []
    reader, _ = fakes(log, eurosat={"fail_after": 500, "error": KeyboardInterrupt})
    with pytest.raises(KeyboardInterrupt):
        prepare_vtab1k(tmp_path, ["dtd", "eurosat"], reader=reader, progress=False, log=lambda m: None)
    assert (tmp_path / "dtd" / MARKER).is_file()
    assert not (tmp_path / "eurosat").exists()  # never a half-written task folder
    assert (tmp_path / PARTIAL / "eurosat" / "images" / "train800").is_dir()
    log.clear()
    reader, _ = fakes(log)
    outcomes = prepare_vtab1k(tmp_path, ["dtd,eurosat"], reader=reader, progress=False, log=lambda m: None)
    assert [o.status for o in outcomes] == ["skipped", "prepared"]
    assert not any(entry[1] == "dtd" for entry in log)  # the finished task is not read again
    assert not (tmp_path / PARTIAL).exists()
    assert check_dataset("vtab1k:eurosat", tmp_path).ok


def test_a_failing_task_leaves_no_folder_and_the_others_finish(tmp_path):
    reader, _ = fakes([], dtd={"fail_after": 10})
    outcomes = prepare_vtab1k(tmp_path, ["dtd", "eurosat"], reader=reader, progress=False, log=lambda m: None)
    assert [(o.task, o.status) for o in outcomes] == [("dtd", "failed"), ("eurosat", "prepared")]
    assert "simulated failure" in outcomes[0].message
    assert not (tmp_path / "dtd").exists() and not (tmp_path / PARTIAL).exists()


def test_manual_download_is_named_with_the_folder_tfds_reads(tmp_path):
    reader, _ = fakes([], eurosat={"manual": True})
    (outcome,) = prepare_vtab1k(tmp_path, ["eurosat"], reader=reader, progress=False, log=lambda m: None)
    assert outcome.status == "manual"
    assert "/fake/tfds/downloads/manual" in outcome.message and "challenge page" in outcome.message
    assert not (tmp_path / "eurosat").exists()


def test_a_folder_not_written_by_prepare_is_left_alone(tmp_path):
    (tmp_path / "dtd").mkdir()
    (tmp_path / "dtd" / "mine.txt").write_text("user data")
    reader, _ = fakes([])
    (outcome,) = prepare_vtab1k(tmp_path, ["dtd"], reader=reader, progress=False, log=lambda m: None)
    assert outcome.status == "failed" and "not written by vprompt data prepare" in outcome.message
    assert (tmp_path / "dtd" / "mine.txt").read_text() == "user data"


def test_unknown_task_is_refused():
    with pytest.raises(ValueError, match="unknown VTAB-1k task"):
        prepare_vtab1k("/nonexistent", ["imagenet"], reader=lambda *a: None)


def test_cli_prepare_then_check(tmp_path, monkeypatch, capsys):
    reader, _ = fakes([])
    monkeypatch.setattr(convert_module, "_reader", reader)
    assert (
        main(["data", "prepare", "vtab1k", "--output", str(tmp_path), "--tasks", "dtd", "--no-progress"]) == 0
    )
    out = capsys.readouterr().out
    assert "[1/1] dtd: prepared: train800 800, val200 200, test 7" in out and "1/1 task(s) ready" in out
    assert main(["data", "check", "vtab1k:dtd", "--root", str(tmp_path)]) == 0
    old = ["data", "prepare", "vtab1k", "--out", str(tmp_path), "--tasks", "dtd", "--no-progress"]
    assert main(old) == 0  # the old spelling of --output still works
    assert "dtd: skipped" in capsys.readouterr().out


def test_a_package_one_builder_needs_fails_that_task_only(tmp_path):
    def reader(spec, tfds_dir):
        task = next(t for t in VTAB1K.values() if t.tfds == spec and t.name in SMALL)
        fake = FakeReader(task, SMALL[task.name])
        if task.name == "dtd":

            def prepare():
                raise ModuleNotFoundError("No module named 'cv2'")

            fake.prepare = prepare
        return fake

    outcomes = prepare_vtab1k(tmp_path, ["dtd", "eurosat"], reader=reader, progress=False, log=lambda m: None)
    assert [o.status for o in outcomes] == ["failed", "prepared"]
    assert "needs a Python package: No module named 'cv2'" in outcomes[0].message


def prepare_cli(out, capsys) -> tuple[int, str]:
    code = main(["data", "prepare", "vtab1k", "--output", str(out), "--tasks", "dtd", "--no-progress"])
    return code, capsys.readouterr().err


def test_a_staging_folder_that_is_a_link_or_a_file_is_refused_and_nothing_is_deleted(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(convert_module, "_reader", fakes([])[0])
    user = tmp_path / "user"
    (user / "dtd").mkdir(parents=True)
    (user / "dtd" / "mine.txt").write_text("user data")
    out = tmp_path / "out"
    out.mkdir()
    (out / PARTIAL).symlink_to(user)  # the whole staging folder is a link
    code, err = prepare_cli(out, capsys)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"vprompt data: error: {out / PARTIAL}: the staging folder") and "a symlink" in err
    (out / PARTIAL).unlink()
    (out / PARTIAL).mkdir()
    (out / PARTIAL / "dtd").symlink_to(user / "dtd")  # one task's staging folder is a link
    code, err = prepare_cli(out, capsys)
    assert code == 2 and err.count("\n") == 1 and "a symlink to" in err
    (out / PARTIAL / "dtd").unlink()
    (out / PARTIAL / "dtd").write_text("")  # a file
    code, err = prepare_cli(out, capsys)
    assert code == 2 and "staging folder of vprompt data prepare is not a folder" in err
    assert (user / "dtd" / "mine.txt").read_text() == "user data" and not (out / "dtd").exists()
    (out / PARTIAL / "dtd").unlink()  # a plain staging folder: prepared, and removed once empty
    assert prepare_cli(out, capsys)[0] == 0 and (out / "dtd" / MARKER).is_file()
    assert not (out / PARTIAL).exists()


def test_an_out_that_is_empty_a_file_or_a_broken_link_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(convert_module, "_reader", fakes([])[0])
    monkeypatch.chdir(tmp_path)
    code, err = prepare_cli("", capsys)
    assert (code, err) == (
        2,
        "vprompt data: error: the output folder (--output) is empty; name the folder to write the tasks into\n",
    )
    assert list(tmp_path.iterdir()) == []  # not written into the current folder
    (tmp_path / "file").write_text("x")
    code, err = prepare_cli(tmp_path / "file", capsys)
    assert code == 2 and err.count("\n") == 1 and "(--output): it is a file, not a folder" in err
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    code, err = prepare_cli(tmp_path / "link", capsys)
    assert code == 2 and err.count("\n") == 1 and "(--output): it is a broken symlink" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "link"]


def test_offline_the_network_is_probed_once_and_each_download_fails_at_once(tmp_path, monkeypatch):
    probes = []
    monkeypatch.setattr(convert_module, "network_reachable", lambda: probes.append(1) or False)
    monkeypatch.setattr(convert_module.urllib.request, "getproxies", dict)  # no proxy
    log = []
    reader, _ = fakes(log, dtd={"prepared": False}, eurosat={"prepared": False})
    outcomes = prepare_vtab1k(
        tmp_path, ["dtd", "eurosat", "clevr_count"], reader=reader, progress=False, log=lambda m: None
    )
    assert [o.status for o in outcomes] == ["failed", "failed", "prepared"]  # clevr_count: in the TFDS folder
    assert probes == [1] and not any(entry[0] == "prepare" and entry[1] != "clevr_count" for entry in log)
    assert outcomes[0].message == (
        "no network (storage.googleapis.com cannot be reached), so TFDS cannot download dtd: run this "
        "command with --tfds-dir DIR on a machine that is online, copy DIR here and pass --tfds-dir DIR"
    )
    assert not (tmp_path / "dtd").exists() and not (tmp_path / PARTIAL).exists()


def test_data_already_in_the_tfds_folder_needs_no_network(tmp_path, monkeypatch):
    def probe():
        raise AssertionError("probed although nothing needs downloading")

    monkeypatch.setattr(convert_module, "network_reachable", probe)
    reader, _ = fakes([])
    (outcome,) = prepare_vtab1k(tmp_path, ["dtd"], reader=reader, progress=False, log=lambda m: None)
    assert outcome.status == "prepared"


def test_the_probe_is_one_short_connection_to_tfds_or_the_proxy(monkeypatch):
    calls = []

    class Connection:
        def close(self):
            calls.append("closed")

    def connect(address, timeout):
        calls.append((address, timeout))
        if address[0] == "storage.googleapis.com":
            raise OSError("Name or service not known")
        return Connection()

    monkeypatch.setattr(convert_module.urllib.request, "getproxies", dict)  # no proxy
    monkeypatch.setattr(convert_module.socket, "create_connection", connect)
    assert convert_module.network_reachable() is False
    assert calls == [(("storage.googleapis.com", 443), 3.0)]
    calls.clear()
    proxies = {"https": "http://proxy.example:3128"}  # downloads go through it: probe it
    monkeypatch.setattr(convert_module.urllib.request, "getproxies", lambda: proxies)
    assert convert_module.network_reachable() is True
    assert calls == [(("proxy.example", 3128), 3.0), "closed"]


def test_written_images_are_lossless_and_old_jpeg_folders_stay_readable(tmp_path):
    """Every written image decodes to exactly the pixels the reader gave (PNG); a folder prepared before,
    with JPEG files named in its lists, still passes the check and loads."""
    from vtab_fakes import example

    reader, _ = fakes([])
    prepare_vtab1k(tmp_path, ["smallnorb_azi"], reader=reader, progress=False, log=lambda m: None)
    task, d = VTAB1K["smallnorb_azi"], tmp_path / "smallnorb_azi"
    for split, (tfds_split, start) in {"train800": ("train", 0), "test": ("test", 210)}.items():
        for i, line in enumerate((d / f"{split}.txt").read_text().splitlines()[:50]):
            rel = line.split()[0]
            assert rel.endswith(".png")
            written = np.asarray(Image.open(d / rel))
            assert np.array_equal(written, task.image(example(task, tfds_split, start + i)))
    record = json.loads((d / MARKER).read_text())
    assert record["image_format"].startswith("png")
    # an old folder: the same images as JPEG, named .jpg in the lists
    for split in ("train800", "val200", "train800val200", "test"):
        lines = (d / f"{split}.txt").read_text().splitlines()
        for line in lines:
            rel = line.split()[0]
            if (d / rel).exists():
                Image.open(d / rel).save(d / rel.replace(".png", ".jpg"), quality=95)
                (d / rel).unlink()
        (d / f"{split}.txt").write_text("\n".join(line.replace(".png", ".jpg") for line in lines) + "\n")
    report = check_dataset("vtab1k:smallnorb_azi", tmp_path, full=False, sample=8)
    assert report.ok, report.summary()
