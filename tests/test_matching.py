"""Rule matching: ref parsing, skip-ci markers, the compiled matcher against fnmatch, and planning."""

import datetime as dt
import fnmatch

import pytest
from hypothesis import given, settings, strategies as st

from opp_ci_app.matching import RuleMatcher, ref_kind, rule_matches, skip_ci_marker
from opp_ci_app.models import RuleType
from opp_ci_app.planning import ProjectRules, parse_timestamp


@pytest.mark.parametrize(
    "ref, expected",
    [
        ("refs/heads/master", (RuleType.BRANCH, "master")),
        ("refs/heads/topic/a/b", (RuleType.BRANCH, "topic/a/b")),
        ("refs/tags/v6.1.0", (RuleType.TAG, "v6.1.0")),
        ("refs/tags/refs/heads/x", (RuleType.TAG, "refs/heads/x")),
        ("refs/notes/ci", (None, "refs/notes/ci")),
        ("refs/heads/", (None, "refs/heads/")),
        ("master", (None, "master")),
    ],
)
def test_ref_kind(ref, expected):
    assert ref_kind(ref) == expected


@pytest.mark.parametrize(
    "message, marker",
    [
        ("Fix the build [skip ci]", "[skip ci]"),
        ("[CI SKIP] docs only", "[ci skip]"),
        ("typo\n\n[No Ci]", "[no ci]"),
        ("[skip OPP_CI] not for this CI", "[skip opp_ci]"),
        ("skip ci without brackets", None),
        ("[skip-ci]", None),
        ("", None),
        (None, None),
    ],
)
def test_skip_ci_marker(message, marker):
    assert skip_ci_marker(message) == marker


# The table in docs/github.md, checked.
EXAMPLES = [
    ("*", "master", True),
    ("*", "topic/a/b", True),
    ("topic/*", "topic/a", True),
    ("topic/*", "topic/a/b", True),
    ("topic/*", "topic", False),
    ("topic/*", "Topic/a", False),
    ("topic/*", "mytopic/a", False),
    ("v6.*", "v6.1.0", True),
    ("v6.*", "v6.", True),
    ("v6.*", "v60", False),
    ("v6.*", "v7.0", False),
    ("v6.*", "V6.1", False),
    ("v6.*", "v6.0", True),
    ("release-4.1", "release-4.1", True),
    ("release-4.1", "release-4.10", False),
    ("release-4.1", "Release-4.1", False),
    ("release-4.1", "release-4.1/fix", False),
    ("release-?", "release-5", True),
    ("release-?", "release-10", False),
    ("feature[1]", "feature[1]", True),
    ("feature[1]", "feature1", True),
    ("feature[1]", "feature2", False),
    ("what?", "what?", True),
    ("what?", "whats", True),
]


@pytest.mark.parametrize("pattern, name, matches", EXAMPLES)
def test_documented_examples(pattern, name, matches):
    assert rule_matches(pattern, name) is matches
    assert RuleMatcher([(1, pattern)]).match(name) == ([1] if matches else [])


def test_matcher_finds_every_matching_rule_among_many():
    rules = [(i, f"feature-{i}/*") for i in range(1000)] + [(1000, "*"), (1001, "feature-7/x"), (1002, "*/x"), (1003, "master")]
    matcher = RuleMatcher(rules)
    assert matcher.match("feature-7/x") == [7, 1000, 1001, 1002]
    assert matcher.match("master") == [1000, 1003]
    assert matcher.match("feature-999/a/b") == [999, 1000]


def test_matcher_without_wildcards_or_rules():
    assert RuleMatcher([]).match("master") == []
    assert RuleMatcher([(3, "master"), (4, "master")]).match("master") == [3, 4]


ALPHABET = "ab/.-*?[]!"
patterns = st.text(alphabet=ALPHABET, min_size=1, max_size=8)
names = st.text(alphabet="ab/.-*?[]!", min_size=1, max_size=10)


@settings(max_examples=300, deadline=None)
@given(st.lists(patterns, max_size=150), names)
def test_matcher_agrees_with_fnmatchcase(pattern_list, name):
    rules = list(enumerate(pattern_list))
    expected = [i for i, p in rules if p == name or fnmatch.fnmatchcase(name, p)]
    assert RuleMatcher(rules).match(name) == expected


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=12))
def test_exact_name_always_matches(name):
    assert 5 in RuleMatcher([(5, name), (6, "other")]).match(name)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="ab/", min_size=0, max_size=6), st.text(alphabet="ab/", min_size=0, max_size=6))
def test_star_crosses_slashes(prefix, rest):
    assert RuleMatcher([(1, prefix + "*")]).match(prefix + rest) == [1]


def test_plan_makes_one_matrix_run_per_matrix():
    rules = ProjectRules.build(
        [(1, RuleType.BRANCH, "master", 10), (2, RuleType.BRANCH, "*", 10), (3, RuleType.BRANCH, "m*", None),
         (4, RuleType.TAG, "master", 11), (5, RuleType.BRANCH, "*", None)],
        [(10, "full", {"axes": {"kind": ["smoke", "fingerprint"]}}), (11, "tags", {"axes": {"kind": ["smoke"]}})],
    )
    plans = rules.plan(RuleType.BRANCH, "master")
    assert [(p.rule_ids, p.matrix.name, [c.label for c in p.matrix.cells]) for p in plans] == [
        ((1, 2), "full", ["smoke", "fingerprint"]),
        ((3, 5), "smoke", ["smoke"]),
    ]
    assert [p.matrix.name for p in rules.plan(RuleType.TAG, "master")] == ["tags"]
    assert rules.plan(RuleType.PR, "master") == []


def test_plan_skips_rules_whose_matrix_cannot_be_expanded():
    rules = ProjectRules.build([(1, RuleType.BRANCH, "*", 10), (2, RuleType.BRANCH, "*", 11)],
                               [(10, "broken", {"axes": "nope"}), (11, "ok", {"axes": {"kind": ["smoke"]}})])
    assert [p.matrix.name for p in rules.plan(RuleType.BRANCH, "x")] == ["ok"]


@pytest.mark.parametrize(
    "value, expected",
    [
        ("2019-05-15T15:20:30-05:00", dt.datetime(2019, 5, 15, 20, 20, 30, tzinfo=dt.timezone.utc)),
        ("2019-05-15T15:20:33Z", dt.datetime(2019, 5, 15, 15, 20, 33, tzinfo=dt.timezone.utc)),
        ("2019-05-15T15:20:33", dt.datetime(2019, 5, 15, 15, 20, 33, tzinfo=dt.timezone.utc)),
        ("yesterday", None),
        (1557933591, None),
        (None, None),
    ],
)
def test_parse_timestamp(value, expected):
    assert parse_timestamp(value) == expected
