"""Hypothesis strategies for hostile OIP requests, shared by the fuzz tests."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from common.datatypes import ALL_DATATYPES

# NOTE: bounded so the whole fuzz folder adds well under 30 s; deadline off because the first
# examples pay for imports and numpy warm-up; no example database, so no .hypothesis/ folder.
FUZZ = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

#: Dims that overflow, go negative, exceed int64, or are ordinary.
DIMS = st.one_of(st.integers(-3, 8), st.sampled_from([0, 1 << 20, 1 << 40, 1 << 41, 2**63 - 1,
                                                      2**63, 2**64 - 1, -(2**63)]))
SHAPES = st.lists(DIMS, max_size=6)
DATATYPES = st.one_of(st.sampled_from(ALL_DATATYPES),
                      st.sampled_from(["", "FLOAT", "fp32", "STRING"]), st.text(max_size=6))
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**65), 2**65),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=4))
#: JSON values a caller may put anywhere: scalars, lists and objects, nested a little.
JSON = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=12)


@st.composite
def tensor_entries(draw: st.DrawFn) -> dict[str, Any]:
    """One `inputs` entry: mostly well formed, with one or two fields made hostile."""
    entry: dict[str, Any] = {"name": draw(st.sampled_from(["INPUT0", "INPUT1", "x"])),
                             "datatype": draw(DATATYPES), "shape": draw(SHAPES)}
    if draw(st.booleans()):
        entry["data"] = draw(st.one_of(JSON, st.lists(SCALARS, max_size=16)))
    else:
        entry["parameters"] = {"binary_data_size": draw(st.one_of(
            st.integers(-4, 64), st.sampled_from([2**31, 2**63 - 1, 2**64 - 1])))}
    if draw(st.integers(0, 9)) == 0:
        entry[draw(st.sampled_from(["name", "datatype", "shape", "parameters"]))] = draw(JSON)
    return entry


@st.composite
def infer_headers(draw: st.DrawFn) -> dict[str, Any]:
    """A whole JSON header of an infer request."""
    header: dict[str, Any] = {"inputs": draw(st.lists(tensor_entries(), max_size=3))}
    if draw(st.booleans()):
        header["id"] = draw(JSON)
    if draw(st.booleans()):
        header["parameters"] = draw(st.dictionaries(st.text(max_size=6), SCALARS, max_size=3))
    if draw(st.booleans()):
        header["outputs"] = draw(st.one_of(JSON, st.lists(
            st.fixed_dictionaries({"name": st.sampled_from(["OUTPUT0", "y"])},
                                  optional={"parameters": JSON}), max_size=3)))
    return header
