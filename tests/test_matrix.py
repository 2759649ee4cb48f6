"""Matrix expansion: the contract's example, limits, and properties over random configs."""

import itertools

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from opp_ci_app.matrix import MAX_CELLS, MatrixError, expand, parse_assignments, parse_axis

INET_FULL = {
    "axes": {"kind": ["smoke", "fingerprint"], "mode": ["release", "debug"]},
    "exclude": [{"kind": "smoke", "mode": "debug"}],
    "include": [{"kind": "statistical", "mode": "release"}],
}


def test_contract_example():
    cells = expand(INET_FULL)
    assert [c.label for c in cells] == [
        "smoke/release",
        "fingerprint/release",
        "fingerprint/debug",
        "statistical/release",
    ]
    assert cells[1].values == {"kind": "fingerprint", "mode": "release"}


def test_no_matrix_is_one_smoke_cell():
    cells = expand(None)
    assert [(c.values, c.label) for c in cells] == [({"kind": "smoke"}, "smoke")]


def test_cap_at_256_cells():
    ok = {"axes": {"a": [str(i) for i in range(16)], "b": [str(i) for i in range(16)]}}
    assert len(expand(ok)) == MAX_CELLS
    too_many = {**ok, "include": [{"a": "x", "b": "y"}]}
    with pytest.raises(MatrixError, match="257 cells"):
        expand(too_many)


def test_huge_product_is_refused_without_building_it():
    config = {"axes": {name: [str(i) for i in range(100)] for name in "abcdef"}}
    with pytest.raises(MatrixError, match="at most 256"):
        expand(config)


@pytest.mark.parametrize(
    "config, field",
    [
        ([], "config"),
        ({"axes": {"kind": []}}, "axes"),
        ({"axes": {"kind": "smoke"}}, "axes"),
        ({"axes": {"kind": ["a", "a"]}}, "axes"),
        ({"axes": {"kind": [None]}}, "axes"),
        ({"axes": {"kind": ["a"]}, "exclude": [{}]}, "exclude"),
        ({"axes": {"kind": ["a"]}, "include": "x"}, "include"),
        ({"axes": {}}, "axes"),
        ({"axes": {"kind": ["a"]}, "include": [{"kind": "a"}]}, "include"),
        ({"axes": {"kind": ["a"]}, "colour": 1}, "config"),
    ],
)
def test_bad_configs_name_the_field(config, field):
    with pytest.raises(MatrixError) as info:
        expand(config)
    assert info.value.field == field


@pytest.mark.parametrize(
    "exclude, message",
    [
        ({"nokey": "x"}, "exclude entry names 'nokey', which is not an axis (axes: 'kind', 'mode')"),
        ({"kind": "smoke", "nokey": "x"}, "'nokey', which is not an axis"),
        ({"kind": "statistical"}, "exclude entry has kind='statistical', which is not a value of axis 'kind'"),
    ],
)
def test_exclude_entries_that_can_never_match_are_refused(exclude, message):
    config = {"axes": INET_FULL["axes"], "exclude": [exclude]}
    with pytest.raises(MatrixError) as info:
        expand(config)
    assert info.value.field == "exclude"
    assert message in str(info.value)


def test_exclude_values_match_numbers_as_text_and_include_keys_are_free():
    config = {"axes": {"gcc": [11, 12]}, "exclude": [{"gcc": "12"}], "include": [{"clang": 17}]}
    assert [c.label for c in expand(config)] == ["11", "17"]


def test_cli_parsers():
    assert parse_axis("kind=smoke, fingerprint") == ("kind", ["smoke", "fingerprint"])
    assert parse_assignments("kind=smoke,mode=debug") == {"kind": "smoke", "mode": "debug"}
    for bad in ["kind", "=a", "kind=", "kind=a,,b"]:
        with pytest.raises(MatrixError):
            parse_axis(bad)
    with pytest.raises(MatrixError):
        parse_assignments("kind=smoke,mode")


values = st.lists(st.text("abcdefgh", min_size=1, max_size=3), min_size=1, max_size=4, unique=True)
axes = st.dictionaries(st.sampled_from(["kind", "mode", "omnetpp", "feature"]), values, min_size=1, max_size=3)


@st.composite
def configs(draw):
    chosen = draw(axes)
    names = list(chosen)
    entry = st.sets(st.sampled_from(names), min_size=1).flatmap(
        lambda keys: st.fixed_dictionaries({key: st.sampled_from(chosen[key]) for key in keys})
    )
    exclude = draw(st.lists(entry, max_size=3))
    include = [
        {name: f"extra{i}" for name in names} for i in range(draw(st.integers(0, 2)))
    ]
    return {"axes": chosen, "exclude": exclude, "include": include}


@given(configs())
@hsettings(max_examples=200, deadline=None)
def test_properties(config):
    cells = expand(config)
    product = list(itertools.product(*config["axes"].values()))
    excluded = [
        combo
        for combo in product
        if any(all(dict(zip(config["axes"], combo)).get(k) == v for k, v in ex.items()) for ex in config["exclude"])
    ]
    assert len(cells) == len(product) - len(excluded) + len(config["include"])
    labels = [c.label for c in cells]
    assert len(set(labels)) == len(labels)
    assert [c.label for c in expand(config)] == labels  # stable order
    kept = [c for c in cells[: len(product) - len(excluded)]]
    assert [tuple(c.values.values()) for c in kept] == [p for p in product if p not in excluded]
