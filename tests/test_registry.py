"""The one registry of methods, model families and data sources: order, then registration; no name twice."""

from __future__ import annotations

import pytest

from vprompt.backbones.families import FAMILIES
from vprompt.data.sources.base import SOURCES
from vprompt.methods import METHODS
from vprompt.registry import Registry


def test_entries_list_by_order_then_registration():
    reg: Registry[int] = Registry("thing")
    reg.add("c", 3, order=5)
    reg.add("a", 1)
    reg.add("b", 2)
    reg.add("z", 0, order=-1)
    assert list(reg) == ["z", "a", "b", "c"] and dict(reg) == {"z": 0, "a": 1, "b": 2, "c": 3}
    assert reg["b"] == 2 and "q" not in reg and reg.get("q") is None and len(reg) == 4
    with pytest.raises(TypeError):
        reg["d"] = 4  # read-only: entries come through add (each kind's decorator)


def test_a_name_registered_twice_is_refused():
    reg: Registry[int] = Registry("method")
    reg.add("ap", 1)
    with pytest.raises(ValueError, match="method 'ap' is registered twice"):
        reg.add("ap", 2)
    assert reg["ap"] == 1


def test_methods_families_and_sources_use_it():
    assert all(isinstance(r, Registry) for r in (METHODS, FAMILIES, SOURCES))
    assert all(name == cls.name for name, cls in METHODS.items())
    assert all(name == family.name for name, family in FAMILIES.items())
