"""The real TFDS reader on every VTAB-1k builder, with TFDS's own mocking (``tfds.testing.mock_data``): the
official dataset names and versions resolve, and each task's label and image derivation works on the
feature structure TFDS really yields (nested ``objects`` for CLEVR and KITTI, one-channel dSprites ...)."""

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from vprompt.data.prepare import VTAB1K  # noqa: E402
from vprompt.data.prepare.tfds_reader import TfdsReader  # noqa: E402


@pytest.fixture(scope="module")
def mocked():
    with tfds.testing.mock_data(num_examples=3, num_sub_examples=4):
        yield


def one_length(example: dict) -> dict:
    """mock_data draws the length of each per-object field on its own; a real example has one length."""
    if "objects" in example:
        n = min(len(v) for v in example["objects"].values())
        example["objects"] = {k: v[:n] for k, v in example["objects"].items()}
    return example


@pytest.mark.parametrize("name", list(VTAB1K))
def test_each_task_reads_through_tfds(name, mocked, tmp_path):
    task = VTAB1K[name]
    reader = TfdsReader(task.tfds, tmp_path)
    wanted = task.tfds.split(":")[1]
    if name == "oxford_iiit_pet":  # TFDS 4.9 dropped 3.x: the fallback is said out loud
        assert "no longer has oxford_iiit_pet:3.*.*" in reader.note
    else:
        assert reader.note == "" and (wanted == reader.version or wanted.split(".")[0] == reader.version[0])
    assert reader.needs_manual_download() is task.manual
    examples = list(reader.examples("train", 0, 3))
    assert len(examples) == 3
    for example in map(one_length, examples):
        image = task.image(example)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        label = task.label(example)
        assert isinstance(label, int)
        if name == "clevr_count":  # mocked scenes hold any number of objects; the real ones 3..10
            assert label == len(example["objects"]["size"]) - 3
        else:
            assert 0 <= label < task.num_classes


def test_manual_folder_is_where_tfds_looks(tmp_path):
    reader = TfdsReader(VTAB1K["resisc45"].tfds, tmp_path)
    assert reader.manual_dir == tmp_path / "downloads" / "manual"
    assert reader.needs_manual_download() and "manual_dir" in reader.manual_instructions
    assert reader.needs_download()  # not in this TFDS folder yet: prepare() would download (network probed)
    (reader.manual_dir).mkdir(parents=True)
    (reader.manual_dir / "NWPU-RESISC45.rar").write_bytes(b"x")
    assert not reader.needs_manual_download()


@pytest.mark.parametrize("name", ["dtd", "dsprites_loc", "smallnorb_azi", "clevr_count", "svhn"])
def test_written_images_decode_to_exactly_the_pixels_tfds_gives(name, mocked, tmp_path):
    """``data prepare``'s image writer on TFDS's (mocked) examples: the file decodes to the very pixels the
    task derives from TFDS's image (lossless PNG; JPEG quality 95 did not)."""
    from PIL import Image

    from vprompt.data.prepare.convert import IMAGE_SUFFIX, write_image

    task = VTAB1K[name]
    for i, example in enumerate(TfdsReader(task.tfds, tmp_path).examples("train", 0, 3)):
        pixels = task.image(one_length(example))
        path = tmp_path / f"{i}{IMAGE_SUFFIX}"
        write_image(pixels, path)
        assert np.array_equal(np.asarray(Image.open(path)), pixels)
        if name == "dtd":  # the old format lost pixels on these random images
            Image.fromarray(pixels).save(tmp_path / "old.jpg", quality=95)
            assert not np.array_equal(np.asarray(Image.open(tmp_path / "old.jpg")), pixels)
