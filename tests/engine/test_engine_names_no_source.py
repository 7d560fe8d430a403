"""The engine asks the data package, never a data source: what only a source knows stays in its file."""

from __future__ import annotations

import ast
from pathlib import Path

import vprompt.engine
from vprompt.data import canonical_split, portable_spec

ENGINE = Path(vprompt.engine.__file__).parent


def test_no_engine_module_imports_a_data_source():
    offenders = []
    for path in sorted(ENGINE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and "data.sources" in (node.module or ""):
                offenders.append(f"{path.name}:{node.lineno} from {'.' * node.level}{node.module}")
    assert not offenders, offenders


def test_sources_declare_their_split_names_and_portable_paths(tmp_path, monkeypatch):
    assert [canonical_split(s) for s in ("train800", "val200", "train800val200", "test", "val", None)] == [
        "train",
        "val",
        "trainval",
        "test",
        "val",
        None,
    ]
    monkeypatch.chdir(tmp_path)
    assert portable_spec("folder:photos?val=0.2&seed=1") == f"folder:{tmp_path / 'photos'}?val=0.2&seed=1"
    assert portable_spec("folder:/abs/photos") == "folder:/abs/photos"
    assert portable_spec("vtab1k:dtd") == "vtab1k:dtd"  # a name under --root, not a path
