"""The run folder under failure: a full disk, no permission, a file in the way, two writers, a kill mid-write,
a user's own files. Each gives one clear error, leaves the previous checkpoint intact and resumes after."""

from __future__ import annotations

import errno
import os
import stat

import pytest

import vprompt
from tiny_runs import TINY, TINY_CLI, same_weights, strip_timing, weights
from vprompt import files
from vprompt.engine.rundir import CHECKPOINT, CONFIG, METRICS, RunDir, RunLocked
from vprompt.files import WriteError

LINEAR = dict(TINY, method="linear", epochs=2)


def fail_writes(monkeypatch, code: int | Exception, after: int = 0, match: str = ""):
    """Make the (after+1)-th and later atomic writes whose target contains ``match`` fail with ``code``
    (an errno, or the exception to raise) at the moment the data is flushed, as a full disk does."""
    calls = {"n": 0}
    original = files.atomic_write

    def failing(path, write):
        if match in str(path):
            calls["n"] += 1
            if calls["n"] > after:

                def broken(f):
                    write(f)
                    raise OSError(code, os.strerror(code)) if isinstance(code, int) else code

                return original(path, broken)
        return original(path, write)

    for module in ("vprompt.files", "vprompt.engine.rundir"):
        monkeypatch.setattr(f"{module}.atomic_write", failing)


def test_a_full_disk_at_the_second_checkpoint_keeps_the_first_and_resumes(tmp_path, monkeypatch):
    cut = RunDir(tmp_path / "cut")
    with monkeypatch.context() as m:
        fail_writes(m, errno.ENOSPC, after=1, match=CHECKPOINT)
        with pytest.raises(
            WriteError, match=r"cannot write .*checkpoint\.pt: no space left .*previous version"
        ):
            vprompt.train(**LINEAR, output=cut.path)
    assert cut.load_checkpoint()["progress"]["epoch"] == 1  # the first checkpoint, intact
    assert not [p for p in os.listdir(cut.path) if p.endswith(".tmp")]  # no temporary file left
    vprompt.train(**LINEAR, output=cut.path, resume=True)  # space freed: it resumes
    vprompt.train(**LINEAR, output=tmp_path / "whole")
    same_weights(weights(cut.path), weights(tmp_path / "whole"))
    assert strip_timing(cut.read_metrics()) == strip_timing(RunDir(tmp_path / "whole").read_metrics())


def test_a_full_disk_at_the_first_checkpoint_claims_no_previous_one(tmp_path, monkeypatch):
    run = RunDir(tmp_path / "run")
    with monkeypatch.context() as m:
        fail_writes(m, errno.ENOSPC, match=CHECKPOINT)
        with pytest.raises(WriteError) as caught:
            vprompt.train(**LINEAR, output=run.path)
    assert "checkpoint.pt: no space left on the device" in str(caught.value)
    assert "intact" not in str(caught.value) and "there was no previous version" in str(caught.value)
    assert not run.has_checkpoint() and not [p for p in os.listdir(run.path) if p.endswith(".tmp")]


#: what torch.save raises when the disk fills up under it (the errno is lost)
TORCH_FULL = "[enforce fail at inline_container.cc:672] . unexpected pos 123 vs 456"


@pytest.mark.parametrize(("free", "words"), [(0, "no space left on the device"), (2**40, "unexpected pos")])
def test_torchs_runtime_error_is_a_full_disk_only_when_the_disk_is_full(tmp_path, monkeypatch, free, words):
    monkeypatch.setattr(files, "free_bytes", lambda folder: free)
    fail_writes(monkeypatch, RuntimeError(TORCH_FULL), match=CHECKPOINT)
    with pytest.raises(
        WriteError, match=rf"checkpoint\.pt: .*{words}.*there was no previous version"
    ) as caught:
        vprompt.train(**LINEAR, output=tmp_path / "run")
    assert caught.value.errno == (errno.ENOSPC if free == 0 else errno.EIO)


def test_a_full_disk_while_writing_the_adapter_is_one_clear_error_and_resumable(tmp_path, monkeypatch):
    run = RunDir(tmp_path / "run")
    with monkeypatch.context() as m:
        fail_writes(m, errno.ENOSPC, match="vprompt_model.safetensors")
        with pytest.raises(WriteError, match=r"vprompt_model\.safetensors: no space left on the device"):
            vprompt.train(**LINEAR, output=run.path)
    assert not run.finished and run.has_checkpoint()
    summary = vprompt.train(**LINEAR, output=run.path, resume=True)
    assert run.finished and summary["epochs"] == 2


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (errno.EACCES, "permission denied"),
        (errno.EROFS, "the file system is read-only"),
        (errno.EDQUOT, "disk quota exceeded"),
    ],
)
def test_os_errors_while_writing_name_the_file_and_the_remedy(tmp_path, monkeypatch, code, words):
    fail_writes(monkeypatch, code, match=CONFIG)
    with pytest.raises(WriteError, match=rf"cannot write .*config\.yaml: {words}"):
        vprompt.train(**LINEAR, output=tmp_path / "run")


def test_an_output_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "taken").write_text("mine")
    with pytest.raises(WriteError, match="is a file, not a folder"):
        vprompt.train(**LINEAR, output=tmp_path / "taken")
    assert (tmp_path / "taken").read_text() == "mine"


def test_an_output_that_is_a_dangling_symlink_is_refused_in_one_line(tmp_path, capsys):
    from vprompt.cli import main

    (tmp_path / "out").symlink_to(tmp_path / "gone")
    with pytest.raises(WriteError, match=r"out as a run folder: it is a broken symlink \(to .*gone"):
        vprompt.train(**LINEAR, output=tmp_path / "out")
    args = [
        "train",
        *TINY_CLI,
    ]
    assert main([*args, "--method", "linear", "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "broken symlink" in err, err
    assert not (tmp_path / "gone").exists()


def test_a_folder_of_the_users_own_files_is_never_written_into(tmp_path):
    mine = tmp_path / "mine"
    (mine / "adapter").mkdir(parents=True)
    (mine / CONFIG).write_text("my: own config\n")
    (mine / METRICS).write_text("my numbers\n")
    with pytest.raises(FileExistsError, match="not a vprompt run folder .*nothing was written"):
        vprompt.train(**LINEAR, output=mine)
    assert (mine / CONFIG).read_text() == "my: own config\n" and (
        mine / METRICS
    ).read_text() == "my numbers\n"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "results.csv").write_text("a,b\n")
    with pytest.raises(FileExistsError, match=r"holds results\.csv"):
        vprompt.train(**LINEAR, output=tmp_path / "other")


def test_an_output_inside_another_run_is_refused(tmp_path):
    outer = tmp_path / "run"
    vprompt.train(**LINEAR, output=outer)
    before = sorted(p.name for p in outer.rglob("*"))
    (tmp_path / "link").symlink_to(outer)
    for inside in (outer / "sub", outer / "adapter", outer / "a" / "b", tmp_path / "link" / "sub"):
        with pytest.raises(
            FileExistsError, match=rf"is inside the run folder {outer}; choose a folder outside"
        ):
            vprompt.train(**LINEAR, output=inside)
    assert sorted(p.name for p in outer.rglob("*")) == before  # nothing written into the outer run


def test_two_trainings_into_one_folder_at_once_the_second_is_refused(tmp_path):
    held = RunDir(tmp_path / "run")
    held.claim()  # another process (an open file description) holds the run's lock
    try:
        with pytest.raises(RunLocked, match="in use by another vprompt process"):
            vprompt.train(**LINEAR, output=held.path)
    finally:
        held.release()
    vprompt.train(**LINEAR, output=held.path)  # free again


def test_temporary_files_of_a_killed_write_are_cleaned_up(tmp_path):
    run = RunDir(tmp_path / "run")
    vprompt.train(**dict(LINEAR, epochs=1), output=run.path)
    (run / "summary.json").unlink()
    stale = [run / f".{CHECKPOINT}.k9x3.tmp", run / "adapter" / ".vprompt_model.safetensors.a1b2.tmp"]
    for p in stale:
        p.write_bytes(b"half a checkpoint")
    vprompt.train(**dict(LINEAR, epochs=1), output=run.path, resume=True)
    assert not any(p.exists() for p in stale)


def test_run_files_get_the_umask_mode_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        run = RunDir(tmp_path / "run")
        vprompt.train(**dict(LINEAR, epochs=1), output=run.path)
    finally:
        os.umask(old)
    for name in (CONFIG, METRICS, "summary.json", CHECKPOINT, "adapter/vprompt_model.safetensors"):
        assert stat.S_IMODE(os.stat(run / name).st_mode) == 0o644, name


def test_a_full_disk_for_the_disk_cache_is_an_error_not_a_sigbus(tmp_path, monkeypatch):
    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    options = dict(TINY, method="ap", method_options={"site": "block.8"}, epochs=1, cache="disk")
    with pytest.raises(WriteError, match=r"--cache disk: cannot reserve .* no space left"):
        vprompt.train(**options, output=tmp_path / "run")
    assert not list((tmp_path / "run").glob("vprompt-cache-*"))
