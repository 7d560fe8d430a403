"""A bad image read in a DataLoader worker reaches the main process as the same one-line DataError
(torch re-raises worker exceptions with the whole worker traceback as their message)."""

import pickle

import pytest
import torch

from fakes import CONFIG
from vprompt.data import DataError, MissingFileError, load


def _first_error(dataset, workers):
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=workers)
    with pytest.raises(DataError) as e:
        for _ in loader:
            pass
    return e.value


def test_undecodable_image_in_a_worker_gives_the_exact_message(vtab_root):
    (vtab_root / "eurosat" / "images" / "train800" / "000002.jpg").write_bytes(b"not a jpeg")
    ds = load("vtab1k:eurosat", vtab_root, "train", CONFIG)
    in_process = _first_error(ds, 0)
    from_worker = _first_error(ds, 1)
    assert type(from_worker) is DataError
    assert str(from_worker) == str(in_process)
    assert str(from_worker).startswith(
        f"{vtab_root / 'eurosat' / 'images' / 'train800' / '000002.jpg'}: cannot"
    )
    assert "\n" not in str(from_worker) and "Traceback" not in str(from_worker)


def test_missing_image_in_a_worker_is_a_file_not_found_data_error(vtab_root):
    missing = vtab_root / "eurosat" / "images" / "test" / "000001.jpg"
    missing.unlink()
    error = _first_error(load("vtab1k:eurosat", vtab_root, "test", CONFIG), 2)
    assert isinstance(error, MissingFileError) and isinstance(error, FileNotFoundError)
    assert str(error) == f"{missing}: image file is missing"


class _Raises(torch.utils.data.Dataset):
    """Raises a chained, two-line DataError for item 1."""

    def __len__(self):
        return 3

    def __getitem__(self, index):
        if index == 1:
            try:
                {}["key"]
            except KeyError as e:
                raise DataError("list.txt:2: first line\n  second line: indented") from e
        return torch.zeros(1)


def test_chained_multiline_message_survives_and_pickles():
    error = _first_error(_Raises(), 1)
    assert str(error) == "list.txt:2: first line\n  second line: indented"
    assert str(pickle.loads(pickle.dumps(error))) == str(error)
    plain = DataError("Caught nothing: a message that only looks like a header")
    assert str(plain) == "Caught nothing: a message that only looks like a header"
