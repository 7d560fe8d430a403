"""Every bad-data path gives a clear error naming the file and the problem; nothing is skipped."""

import json

import numpy as np
import pytest

from fakes import CONFIG
from vprompt.data import DataError, check_dataset, check_num_classes, describe, load, preflight, sources
from vprompt.data.datasets import ArrayDataset

SIZES = {"train": 4, "val": 2, "trainval": 6}


def test_missing_root_and_task_folder(tmp_path):
    with pytest.raises(ValueError, match="needs a data root"):
        describe("vtab1k:eurosat", None)
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'eurosat'}.*not found"):
        describe("vtab1k:eurosat", tmp_path)


def test_missing_split_file(vtab_root):
    (vtab_root / "eurosat" / "val200.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"val200\.txt: split file is missing"):
        load("vtab1k:eurosat", vtab_root, "val", CONFIG)
    report = check_dataset("vtab1k:eurosat", vtab_root, expected_sizes=SIZES)
    assert any("val200.txt: split file is missing" in p for p in report.problems)


def test_undecodable_image_fails_at_item_load_naming_file(vtab_root):
    bad = vtab_root / "eurosat" / "images" / "train800" / "000002.jpg"
    bad.write_bytes(b"not a jpeg at all")
    ds = load("vtab1k:eurosat", vtab_root, "train", CONFIG)  # loading the split is fine
    ds[1]
    with pytest.raises(DataError, match=r"000002\.jpg: cannot decode image"):
        ds[2]
    report = check_dataset("vtab1k:eurosat", vtab_root, expected_sizes=SIZES)
    assert [p for p in report.problems if "000002.jpg: cannot decode image" in p]


def test_missing_image_file(vtab_root):
    (vtab_root / "eurosat" / "images" / "test" / "000001.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"000001\.jpg: image file is missing"):
        load("vtab1k:eurosat", vtab_root, "test", CONFIG)[1]
    report = check_dataset("vtab1k:eurosat", vtab_root, expected_sizes=SIZES, full=False, sample=1)
    assert any("000001.jpg: image file is missing" in p for p in report.problems)


def test_label_out_of_range_names_file_and_line(vtab_root):
    path = vtab_root / "eurosat" / "test.txt"
    lines = path.read_text().splitlines()
    lines[1] = "images/test/000001.jpg 10"
    path.write_text("\n".join(lines))
    with pytest.raises(DataError, match=r"test\.txt:2: label 10 out of range \[0, 10\)"):
        load("vtab1k:eurosat", vtab_root, "test", CONFIG)


def test_malformed_list_line(vtab_root):
    (vtab_root / "eurosat" / "val200.txt").write_text("images/val200/000000.jpg\n")
    with pytest.raises(DataError, match=r"val200\.txt:1: expected '<image path> <label>'"):
        load("vtab1k:eurosat", vtab_root, "val", None)


def test_head_class_count_mismatch(vtab_root):
    info = describe("vtab1k:eurosat", vtab_root)
    check_num_classes(info, 10)
    with pytest.raises(ValueError, match="vtab1k:eurosat has 10 classes but the head has 100 outputs"):
        check_num_classes(info, 100)
    with pytest.raises(ValueError, match="head has 5 outputs"):
        preflight("vtab1k:eurosat", vtab_root, ["train"], head_classes=5, expected_sizes=SIZES)


def test_preflight_raises_listing_problems(vtab_root):
    with pytest.raises(DataError, match="4 images, expected 800"):
        preflight("vtab1k:eurosat", vtab_root, ["train", "val"])
    (vtab_root / "eurosat" / "images" / "val200" / "000000.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=r"val200/000000\.jpg: cannot decode image"):
        preflight("vtab1k:eurosat", vtab_root, ["train", "val"], expected_sizes=SIZES)


def test_fgvc_class_count_and_missing_json(fgvc_root):
    folder = fgvc_root / "OxfordFlower"
    ann = json.loads((folder / "train.json").read_text())
    (folder / "train.json").write_text(json.dumps({k: v for k, v in ann.items() if v <= 50}))
    (folder / "val.json").write_text("{}")
    (folder / "test.json").write_text("{}")
    with pytest.raises(DataError, match="50 distinct labels.*Oxford Flowers 102 has 102 classes"):
        describe("fgvc:flowers", fgvc_root)
    (folder / "test.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"test\.json: split file is missing"):
        describe("fgvc:flowers", fgvc_root)
    with pytest.raises(FileNotFoundError, match="CUB_200_2011"):
        describe("fgvc:cub", fgvc_root)


def test_coop_errors(coop_root):
    split_file = coop_root / "eurosat" / "split_zhou_EuroSAT.json"
    data = json.loads(split_file.read_text())
    data["test"][0][1] = 12
    split_file.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"split_zhou_EuroSAT\.json \[test\]\[0\]: label 12 out of range"):
        load("vp:eurosat", coop_root, "test", CONFIG)
    split_file.write_text(json.dumps({"train": []}))
    with pytest.raises(DataError, match="split_zhou_EuroSAT.json: expected"):
        describe("vp:eurosat", coop_root)
    split_file.unlink()
    with pytest.raises(FileNotFoundError, match="split_zhou_EuroSAT.json: split file is missing"):
        describe("vp:eurosat", coop_root)


def test_fashion_mnist_missing_everywhere(tmp_path, monkeypatch):
    monkeypatch.setattr(sources.fashion_mnist, "FASHION_MNIST_DEBIAN", tmp_path / "none")
    with pytest.raises(FileNotFoundError, match="Fashion-MNIST idx files not found.*dataset-fashion-mnist"):
        load("fashion-mnist", None, "train", CONFIG)


def test_array_labels_and_bad_idx(tmp_path):
    with pytest.raises(DataError, match="arr: label 10 at index 1 out of range"):
        ArrayDataset(np.zeros((2, 4, 4), np.uint8), np.array([0, 10]), 10, "arr")
    bad = tmp_path / "train-images-idx3-ubyte.gz"
    bad.write_bytes(b"garbage")
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"garbage")
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: cannot read IDX data"):
        load("fashion-mnist", tmp_path, "train", CONFIG)


def test_bad_specs_splits_and_configs(vtab_root):
    with pytest.raises(ValueError, match="unknown dataset spec"):
        describe("imagenet21k")
    with pytest.raises(ValueError, match="unknown VTAB-1k task 'eurosatt'"):
        describe("vtab1k:eurosatt", vtab_root)
    with pytest.raises(ValueError, match="synthetic:<classes>x<size>"):
        describe("synthetic:4")
    with pytest.raises(ValueError, match="has no split 'validation'"):
        load("fashion-mnist", None, "validation", CONFIG)
    with pytest.raises(ValueError, match="data config lacks mean, std"):
        load("synthetic:2x8", None, "train", {"input_size": (3, 8, 8)})
    with pytest.raises(ValueError, match="unknown protocol"):
        load("synthetic:2x8", None, "train", CONFIG, protocol="imagenet")


def _write_fashion_idx(folder, n=5):
    import gzip

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        for kind, array in (
            ("images-idx3", rng.integers(0, 256, (n, 28, 28))),
            ("labels-idx1", np.arange(n) % 10),
        ):
            header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
                int(d).to_bytes(4, "big") for d in array.shape
            )
            with gzip.open(folder / f"{prefix}-{kind}-ubyte.gz", "wb") as f:
                f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_named_root_without_the_files_is_an_error_not_another_copy(tmp_path, monkeypatch):
    debian = tmp_path / "debian"
    _write_fashion_idx(debian)
    monkeypatch.setattr(sources.fashion_mnist, "FASHION_MNIST_DEBIAN", debian)
    assert describe("fashion-mnist").root == debian  # no root: the packaged copy
    with pytest.raises(FileNotFoundError) as e:
        describe("fashion-mnist", tmp_path / "nonexistent")
    assert (
        f"not found in {tmp_path / 'nonexistent'}, {tmp_path / 'nonexistent' / 'FashionMNIST' / 'raw'}"
        in str(e.value)
    )
    assert f"({tmp_path / 'nonexistent'} is not a folder)" in str(e.value)
    assert f"give no root to use the Debian package's copy in {debian}" in str(e.value)
    other = tmp_path / "my_data"
    (other / "cifar").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=rf"not found in {other}, .*\({other} holds other files\)"):
        load("fashion-mnist", other, "train", CONFIG)
    _write_fashion_idx(other / "FashionMNIST" / "raw", n=7)  # where torchvision puts them
    assert len(load("fashion-mnist", other, "trainval", CONFIG)) == 7


def test_fashion_mnist_empty_root_downloads_into_it_only(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    calls = []

    class OfflineFashionMNIST:
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(sources.fashion_mnist, "FASHION_MNIST_DEBIAN", tmp_path / "debian")
    _write_fashion_idx(tmp_path / "debian")
    monkeypatch.setattr(tvd, "FashionMNIST", OfflineFashionMNIST)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert describe("fashion-mnist", empty).root is None
    with pytest.raises(FileNotFoundError, match=r"\(download failed: Error downloading train-images"):
        load("fashion-mnist", empty, "test", CONFIG)
    assert calls == [(str(empty), False, True)]


def test_idx_files_are_read_once_per_process_and_again_when_they_change(tmp_path):
    """A sweep's runs share one decoded copy of an IDX file (read-only, so no run can alter another's
    images); a file rewritten in place is read again."""
    import gzip
    import os

    from vprompt.data.datasets import read_idx_gz

    def write(values):
        header = b"\x00\x00\x08\x01" + len(values).to_bytes(4, "big")
        with gzip.open(tmp_path / "labels-idx1-ubyte.gz", "wb") as f:
            f.write(header + bytes(values))

    write([1, 2, 3])
    first = read_idx_gz(tmp_path / "labels-idx1-ubyte.gz")
    assert first.tolist() == [1, 2, 3]
    assert read_idx_gz(tmp_path / "labels-idx1-ubyte.gz") is first
    with pytest.raises(ValueError, match="read-only"):
        first[0] = 9
    write([4, 5, 6, 7])
    os.utime(tmp_path / "labels-idx1-ubyte.gz", ns=(1, 1))  # a new modification time, whatever the clock
    assert read_idx_gz(tmp_path / "labels-idx1-ubyte.gz").tolist() == [4, 5, 6, 7]
    assert first.tolist() == [1, 2, 3]
