"""Images are decoded to 8-bit RGB the same way for training, ``data check`` and ``predict``:
16-bit greyscale is scaled by its high byte (``value >> 8``), not clipped at 255; EXIF orientation is
applied; palette images with transparency and 1×1 images load without warnings."""

import numpy as np
import pytest
import torch
from PIL import Image

from vprompt.data import build_transform, check_dataset, load
from vprompt.data.datasets import open_image, to_rgb

VALUES16 = np.array([[0, 255, 256, 1000, 32768, 65535]], dtype=np.uint16)
VALUES8 = [0, 0, 1, 3, 128, 255]  # value >> 8


def _png16(path, values=VALUES16):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values).save(path)
    with Image.open(path) as im:  # a real 16-bit PNG, as PIL reads it back
        assert im.mode == "I;16" and np.asarray(im).dtype == np.uint16
    return path


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    rgb = np.asarray(open_image(_png16(tmp_path / "x16.png")))
    assert rgb.shape == (1, 6, 3) and rgb.dtype == np.uint8
    assert rgb[0, :, 0].tolist() == VALUES8
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()


@pytest.mark.parametrize("mode", ["I;16B", "I;16L", "I"])
def test_other_16bit_modes(mode):
    if mode == "I":  # 32-bit integers holding 16-bit values (what some decoders give for 16-bit data)
        image = Image.fromarray(np.array([[-5, 255, 256, 1000, 32768, 65535, 70000]], dtype=np.int32), "I")
        expected = [0, 0, 1, 3, 128, 255, 255]
    else:
        dtype = ">u2" if mode == "I;16B" else "<u2"
        image = Image.frombytes(mode, (6, 1), VALUES16.astype(dtype).tobytes())
        expected = VALUES8
    assert image.mode == mode
    out = to_rgb(image)
    assert out.mode == "RGB" and np.asarray(out)[0, :, 2].tolist() == expected


def test_training_transform_and_data_check_read_16bit_the_same_way(tmp_path):
    for cls, seed in (("a", 0), ("b", 1)):
        values = np.random.default_rng(seed).integers(0, 65536, (8, 8), dtype=np.uint16)
        _png16(tmp_path / "ds" / cls / "0.png", values)
    config = {
        "input_size": (3, 8, 8),
        "mean": (0.0, 0.0, 0.0),
        "std": (1.0, 1.0, 1.0),
        "interpolation": "nearest",
    }
    ds = load(f"folder:{tmp_path / 'ds'}", None, "all", config)
    x, _ = ds[1]
    high_byte = np.random.default_rng(1).integers(0, 65536, (8, 8), dtype=np.uint16) >> 8
    assert torch.allclose(x[0], torch.from_numpy(high_byte.astype(np.float32) / 255))
    assert 0.3 < x.mean() < 0.7  # not binarised: clipping would make almost every pixel 1.0
    # the transform's own RGB step scales a 16-bit image handed to it directly
    t = build_transform(config, "vp")
    assert torch.allclose(t(Image.open(tmp_path / "ds" / "b" / "0.png")), x)
    report = check_dataset(f"folder:{tmp_path / 'ds'}", splits=["all"])  # one image a class: no hold-out
    assert report.ok and report.splits[0].decoded == 2


def test_exif_orientation_is_applied_for_training_and_predict(tmp_path):
    """A phone photo stored sideways, EXIF orientation 6 (turn 90° clockwise to show it): read upright."""
    pixels = np.zeros((20, 30, 3), np.uint8)
    pixels[:, :15] = (230, 20, 20)  # stored: left half red, right half blue
    pixels[:, 15:] = (20, 20, 230)
    exif = Image.Exif()
    exif[0x0112] = 6
    for cls in ("a", "b"):
        (tmp_path / "ds" / cls).mkdir(parents=True)
        Image.fromarray(pixels).save(tmp_path / "ds" / cls / "photo.jpg", exif=exif, quality=95)
    path = tmp_path / "ds" / "a" / "photo.jpg"
    upright = np.asarray(open_image(path))  # what training, data check and predict read
    assert upright.shape == (30, 20, 3)  # 30 high, 20 wide
    assert upright[3, 10].argmax() == 0 and upright[26, 10].argmax() == 2  # red on top, blue below
    with Image.open(path) as image:  # hf: data and torchvision datasets go through to_rgb
        assert to_rgb(image).size == (20, 30)
    image, _ = load(f"folder:{tmp_path / 'ds'}", None, "all", None)[0]
    assert image.size == (20, 30)


@pytest.mark.filterwarnings("error")
def test_palette_transparency_and_1x1_images_load_as_rgb_without_warnings(tmp_path):
    palette = Image.new("P", (4, 4))
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    palette.putpixel((1, 1), 1)
    (tmp_path / "ds" / "a").mkdir(parents=True)
    palette.save(tmp_path / "ds" / "a" / "palette.png", transparency=bytes([0, 128, 255]))
    with Image.open(tmp_path / "ds" / "a" / "palette.png") as image:
        assert image.mode == "P" and isinstance(image.info["transparency"], bytes)  # PIL warned on these
    (tmp_path / "ds" / "b").mkdir()
    Image.new("L", (1, 1), 77).save(tmp_path / "ds" / "b" / "one.png")
    rgb = open_image(tmp_path / "ds" / "a" / "palette.png")
    assert rgb.mode == "RGB" and rgb.getpixel((1, 1)) == (255, 0, 0) and rgb.getpixel((0, 0)) == (0, 0, 0)
    assert open_image(tmp_path / "ds" / "b" / "one.png").getpixel((0, 0)) == (77, 77, 77)
    config = {"input_size": (3, 8, 8), "mean": (0.0,) * 3, "std": (1.0,) * 3, "interpolation": "bicubic"}
    ds = load(f"folder:{tmp_path / 'ds'}", None, "all", config)
    assert [tuple(x.shape) for x, _ in ds] == [(3, 8, 8), (3, 8, 8)]
    assert check_dataset(f"folder:{tmp_path / 'ds'}", splits=["all"]).ok
