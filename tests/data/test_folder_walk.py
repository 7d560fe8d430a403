"""``folder:<path>`` datasets: symlinks are followed but never looped, nothing is skipped without a word,
and a classifier gets at least two classes, each with images."""

import os

import pytest

from fakes import CONFIG, write_image
from vprompt.data import DataError, check_dataset, describe, load


@pytest.fixture
def pets(tmp_path):
    """``pets/{cat,dog}/{0,1}.png``."""
    for cls in ("cat", "dog"):
        for i in range(2):
            write_image(tmp_path / "pets" / cls / f"{i}.png", seed=i)
    return tmp_path / "pets"


def test_symlinked_class_folders_and_images_on_another_disk_are_read(pets, tmp_path_factory):
    other = tmp_path_factory.mktemp("other_disk")
    for i in range(3):
        write_image(other / "birds" / f"{i}.jpg", seed=10 + i)
    write_image(other / "extra.png", seed=20)
    (pets / "bird").symlink_to(other / "birds", target_is_directory=True)
    (pets / "dog" / "nested").mkdir()
    (pets / "dog" / "nested" / "extra.png").symlink_to(other / "extra.png")
    info = describe(f"folder:{pets}")
    assert info.class_names == ("bird", "cat", "dog")
    ds = load(f"folder:{pets}", None, "all", CONFIG)
    assert ds.targets == [0, 0, 0, 1, 1, 2, 2, 2]
    assert [s.path.relative_to(pets).as_posix() for s in ds.samples][-3:] == [
        "dog/0.png",
        "dog/1.png",
        "dog/nested/extra.png",
    ]
    assert ds[7][0].shape == (3, 32, 32)


@pytest.mark.parametrize("target", ["..", "../..", "/", "."])
def test_symlink_loop_is_reported_naming_the_link(pets, target):
    link = pets / "cat" / "loop"
    link.symlink_to(target, target_is_directory=True)
    with pytest.raises(DataError) as e:
        load(f"folder:{pets}", None, "all", None)
    assert str(e.value).startswith(f"{link}: symlink loop (it leads back to ")
    report = check_dataset(f"folder:{pets}")
    assert len(report.problems) == 1 and report.problems[0].startswith(f"{link}: symlink loop")


def test_loop_deeper_down_and_a_self_link(pets):
    deep = pets / "dog" / "a" / "b"
    deep.mkdir(parents=True)
    (deep / "up").symlink_to(pets / "dog" / "a", target_is_directory=True)
    with pytest.raises(
        DataError, match=rf"^{deep / 'up'}: symlink loop \(it leads back to {pets / 'dog' / 'a'},"
    ):
        load(f"folder:{pets}", None, "all", None)
    (deep / "up").unlink()
    (deep / "self.png").symlink_to("self.png")
    with pytest.raises(
        DataError, match=rf"^{deep / 'self.png'}: symlink loop \(the link resolves to itself\)"
    ):
        load(f"folder:{pets}", None, "all", None)


def test_a_folder_reached_twice_is_reported(pets):
    (pets / "dog" / "cats_again").symlink_to(pets / "cat", target_is_directory=True)
    with pytest.raises(DataError) as e:
        load(f"folder:{pets}", None, "all", None)
    assert str(e.value) == (
        f"{pets / 'dog' / 'cats_again'}: leads to the same folder as {pets / 'cat'}; "
        "its images would be counted twice"
    )
    (pets / "dog" / "cats_again").unlink()
    (pets / "kitten").symlink_to(pets / "cat", target_is_directory=True)
    with pytest.raises(DataError, match=rf"^{pets / 'kitten'}: leads to the same folder as {pets / 'cat'}"):
        describe(f"folder:{pets}")


def test_broken_symlinks_are_reported_not_skipped(pets):
    gone = pets / "dog" / "2.png"
    gone.symlink_to(pets / "nowhere.png")
    with pytest.raises(DataError) as e:
        load(f"folder:{pets}", None, "all", None)
    assert str(e.value) == f"{gone}: broken symlink (its target {str(pets / 'nowhere.png')!r} does not exist)"
    gone.unlink()
    (pets / "fish").symlink_to("../fish_on_unmounted_disk")
    with pytest.raises(DataError, match=rf"^{pets / 'fish'}: broken symlink"):
        describe(f"folder:{pets}")


def test_one_class_or_none_is_refused(tmp_path):
    write_image(tmp_path / "only" / "cat" / "0.png", seed=0)
    with pytest.raises(DataError) as e:
        describe(f"folder:{tmp_path / 'only'}")
    assert (
        str(e.value)
        == f"{tmp_path / 'only'}: a folder dataset needs at least 2 class sub-folders, found only 'cat'"
    )
    (tmp_path / "none").mkdir()
    with pytest.raises(DataError, match="needs at least 2 class sub-folders, found none"):
        describe(f"folder:{tmp_path / 'none'}")
    # split folders: the classes are those of train/
    for split in ("train", "test"):
        write_image(tmp_path / "splits" / split / "cat" / "0.png", seed=0)
    with pytest.raises(DataError, match=rf"^{tmp_path / 'splits' / 'train'}: .* found only 'cat'"):
        describe(f"folder:{tmp_path / 'splits'}")


def test_empty_class_folder_is_an_error_naming_it(pets):
    (pets / "empty").mkdir()
    (pets / "empty" / "notes.txt").write_text("not an image")
    (pets / "empty" / ".hidden.png").write_bytes(b"")
    with pytest.raises(DataError) as e:
        describe(f"folder:{pets}")
    assert str(e.value).startswith(f"{pets / 'empty'}: class folder has no images (")
    # in a split folder other than train as well
    (pets / "empty" / "notes.txt").unlink()
    (pets / "empty" / ".hidden.png").unlink()
    (pets / "empty").rmdir()
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            write_image(pets / split / cls / "0.png", seed=1)
    (pets / "val" / "dog" / "0.png").unlink()
    assert describe(f"folder:{pets}").splits == ("train", "val")
    with pytest.raises(DataError, match=rf"^{pets / 'val' / 'dog'}: class folder has no images"):
        load(f"folder:{pets}", None, "val", None)
    assert len(load(f"folder:{pets}", None, "train", None)) == 2


def test_walk_is_in_name_order_and_ignores_hidden_and_non_image_files(pets):
    (pets / "cat" / ".ipynb_checkpoints").mkdir()
    write_image(pets / "cat" / ".ipynb_checkpoints" / "0-checkpoint.png", seed=5)
    (pets / "cat" / "readme.txt").write_text("x")
    write_image(pets / "cat" / "sub" / "a.PNG", seed=6)
    ds = load(f"folder:{pets}", None, "all", None)
    assert [os.path.relpath(s.path, pets) for s in ds.samples] == [
        "cat/0.png",
        "cat/1.png",
        "cat/sub/a.PNG",
        "dog/0.png",
        "dog/1.png",
    ]
