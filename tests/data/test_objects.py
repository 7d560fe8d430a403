"""Data given as Python objects: class names, splits, items, the fingerprint, and clear errors."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset, TensorDataset
from torchvision import transforms as T
from torchvision.datasets import ImageFolder

from fakes import CONFIG, write_image
from vprompt import data as vdata
from vprompt.data import DataError, from_objects
from vprompt.data.fingerprint import fingerprint


@pytest.fixture
def photos(tmp_path):
    for c, name in enumerate(["cat", "dog", "owl"]):
        for i in range(5):
            write_image(tmp_path / "photos" / name / f"{i}.png", seed=10 * c + i, size=8)
    return tmp_path / "photos"


class Listed(Dataset):
    """A user's own dataset: a list of (PIL image, label) and a ``class_names`` attribute."""

    def __init__(self, labels, class_names=("no", "yes"), size=8, transform=None):
        self.items = [(Image.new("RGB", (size, size), (40 * i, 0, 0)), y) for i, y in enumerate(labels)]
        self.class_names, self.transform = class_names, transform

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        image, label = self.items[i]
        return (self.transform(image) if self.transform else image), label


def test_class_names_come_from_classes_class_names_or_the_label_feature(photos):
    assert from_objects(ImageFolder(photos)).info.class_names == ("cat", "dog", "owl")
    assert from_objects(Listed([0, 1, 1])).info.class_names == ("no", "yes")
    features = datasets.Features({"img": datasets.Image(), "kind": datasets.ClassLabel(names=["a", "b"])})
    hf = datasets.Dataset.from_dict({"img": [Image.new("RGB", (8, 8))] * 3, "kind": [1, 0, 1]}, features)
    source = from_objects(hf)
    assert source.info.class_names == ("a", "b") and source.targets["train"] == [1, 0, 1]
    assert source.dataset("trainval")[0][1] == 1  # dict items: the Image and ClassLabel columns
    # through a Subset: the names of the dataset inside, the labels at its indices
    sub = from_objects(Subset(ImageFolder(photos), [14, 0, 7]))
    assert sub.info.class_names == ("cat", "dog", "owl") and sub.targets["train"] == [2, 0, 1]
    # no names anywhere: class_<i> for the labels found (read item by item)
    plain = from_objects(TensorDataset(torch.zeros(4, 3, 8, 8), torch.tensor([0, 2, 1, 2])))
    assert plain.info.class_names == ("class_0", "class_1", "class_2") and plain.info.own_transforms


def test_splits_of_one_dataset_a_pair_and_a_dict(photos):
    one = from_objects(ImageFolder(photos))
    assert one.info.splits == ("train", "val", "trainval")  # val held out, as for every train-only source
    assert (len(one.dataset("train")), len(one.dataset("val")), len(one.dataset("trainval"))) == (13, 2, 15)
    pair = from_objects((ImageFolder(photos), Listed([0, 1], class_names=("cat", "dog", "owl"))))
    assert pair.info.splits == ("train", "val", "trainval") and len(pair.dataset("trainval")) == 17
    named = from_objects(
        {
            "train": ImageFolder(photos),
            "validation": ImageFolder(photos),
            "test": Listed([2], ("cat", "dog", "owl")),
        }
    )
    assert named.info.splits == ("train", "val", "trainval", "test")
    assert named.info.name == (
        "Python objects: train ImageFolder (15 items), val ImageFolder (15 items), test Listed (1 items)"
    )
    only_test = from_objects({"test": ImageFolder(photos)})  # what evaluate_run needs for a new test set
    assert only_test.info.splits == ("test",)


def test_images_get_the_run_s_transform_and_tensors_are_taken_as_they_are(photos):
    image, label = vdata.load(from_objects(ImageFolder(photos)), None, "trainval", CONFIG)[5]
    assert (tuple(image.shape), label) == ((3, 32, 32), 1)  # resized to the model's input and normalised
    reference = T.Compose([T.Resize((32, 32), T.InterpolationMode.BICUBIC), T.ToTensor()])
    expected = T.Normalize(CONFIG["mean"], CONFIG["std"])(reference(Image.open(photos / "dog" / "0.png")))
    assert torch.equal(image, expected)
    own = Listed([0, 1, 0], transform=T.Compose([T.Resize((32, 32)), T.ToTensor()]))
    tensor, _ = vdata.load(from_objects(own), None, "trainval", CONFIG)[1]
    assert torch.equal(tensor, own[1][0])  # not normalised again
    small = Listed([0, 1, 0], transform=T.ToTensor())  # 8×8 tensors for a 32×32 model
    with pytest.raises(DataError) as e:
        vdata.load(from_objects(small), None, "trainval", CONFIG)
    assert str(e.value) == (
        "train data item 0: a tensor of shape (3, 8, 8), but the model takes (3, 32, 32); give PIL "
        "images (vprompt then applies the backbone's transforms) or tensors of that shape"
    )


def test_the_fingerprint_is_stable_and_sees_labels_and_pixels_change(photos):
    spec = from_objects(ImageFolder(photos)).info.spec
    assert spec.startswith("python:ImageFolder#") and from_objects(ImageFolder(photos)).info.spec == spec
    relabelled = ImageFolder(photos)
    relabelled.targets[3] = 2
    assert from_objects(relabelled).info.spec != spec
    write_image(photos / "cat" / "0.png", seed=99, size=8)  # the first item, always in the sample
    assert from_objects(ImageFolder(photos)).info.spec != spec
    # random transforms give the same fingerprint every time (drawn under fixed seeds)
    noisy = Listed([0, 1] * 4, transform=T.Compose([T.RandomCrop(6), T.ToTensor()]))
    assert from_objects(noisy).info.spec == from_objects(noisy).info.spec
    # a run records it per split, the held-out subsets included
    source = from_objects(ImageFolder(photos))
    prints = [fingerprint(source.dataset(s)) for s in ("train", "val")]
    assert [p["items"] for p in prints] == [13, 2] and prints[0]["sha256"] != prints[1]["sha256"]
    assert fingerprint(from_objects(ImageFolder(photos)).dataset("train")) == prints[0]


class Items(Dataset):
    def __init__(self, items, **attributes):
        self.items = items
        self.__dict__.update(attributes)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


PIXEL = Image.new("RGB", (4, 4))


class Stream(IterableDataset):
    def __iter__(self):
        yield PIXEL, 0


@pytest.mark.parametrize(
    "data, message",
    [
        (
            5,
            "data: expected a dataset spec string, a map-style dataset (len and indexing), a pair (train, "
            "val) or a dict of splits; the train data is int",
        ),
        (
            DataLoader(Items([(PIXEL, 0)])),
            "the train data is DataLoader (a DataLoader: pass its dataset, loader.dataset; vprompt builds",
        ),
        (
            {"train": Items([(PIXEL, 0)]), "val": Stream()},
            "the val data is Stream (an iterable-style dataset: vprompt needs len and indexing",
        ),
        (Items([]), "data: the train dataset (Items) holds no items"),
        (Items([1, 2]), "data (Items): items are int; expected (image, label) pairs or dicts"),
        (
            Items([{"picture": PIXEL, "y": 0}]),
            "items are dicts with keys ['picture', 'y']; vprompt reads the keys",
        ),
        (
            Items([(PIXEL, 0), (PIXEL, 5)], classes=["a", "b"]),
            "train data item 1: label 5 out of range [0, 2) (2 class names)",
        ),
        (Items([(PIXEL, 0.5)]), "train data item 0: label 0.5 is not a class index (an integer)"),
        (Items([(PIXEL, np.int64(-1))]), "train data item 0: label -1 out of range [0, 1)"),
        (
            {"training": Items([(PIXEL, 0)])},
            "data splits ['training'] are unknown; name them train, val, test",
        ),
        (
            (Items([(PIXEL, 0)], classes=["a"]), Items([(PIXEL, 0)], classes=["b"])),
            "data: the splits name different classes (train: a; val: b)",
        ),
        (Items([("not an image", 0)]), "train data item 0: the image is str; expected a PIL image, a uint8"),
    ],
)
def test_bad_objects_are_one_clear_error(data, message):
    with pytest.raises(ValueError) as e:
        source = from_objects(data)
        source.dataset("trainval")[0]
    assert message in str(e.value) and "\n" not in str(e.value)


def test_the_recorded_spec_alone_is_refused_saying_to_pass_the_data_again():
    with pytest.raises(ValueError) as e:
        vdata.describe("python:ImageFolder#0123456789abcdef")
    assert str(e.value) == (
        "python:ImageFolder#0123456789abcdef: this data was given to vprompt as Python objects, which a run "
        "folder does not hold; pass the dataset again through the Python API: vprompt.train(..., "
        "data=dataset, output=RUN, resume=True) or vprompt.evaluate_run(RUN, data=dataset)"
    )
