"""Typed parameters: the spec read from a notebook, and user text turned into values."""

from __future__ import annotations

import pytest

from clusterbook.catalogue import Catalogue, inspect_parameters
from clusterbook.errors import ParameterError
from fixtures.engine import FIXTURE_RUNBOOKS


@pytest.fixture(scope="module")
def typed():
    return Catalogue(FIXTURE_RUNBOOKS).get("17_typed")


def test_spec_reads_types_defaults_help_and_choices(typed):
    specs = typed.parameters
    assert [s.type_name for s in specs.values()] == [
        "str", "int", "float", "bool", "list[str]", "choice"
    ]
    assert specs["count"].minimum == 0 and specs["count"].maximum == 5
    assert specs["mode"].choices == ("fast", "safe")
    assert specs["mode"].default == "safe"
    assert specs["tags"].default == []
    assert specs["name"].help == "text"


def test_text_is_parsed_into_declared_types(typed):
    values = typed.parse_words([
        "name=a b", "count=3", "ratio=0.25", "enabled=yes", "tags=x, y,z", "mode=fast",
    ]).values
    assert values == {
        "name": "a b", "count": 3, "ratio": 0.25, "enabled": True,
        "tags": ["x", "y", "z"], "mode": "fast",
    }
    assert typed.parse_words(['tags=["a,b", "c"]']).values["tags"] == ["a,b", "c"]


@pytest.mark.parametrize("words, fragment", [
    (["colour=red"], "has no parameter named 'colour'"),
    (["count=three"], "is not an integer"),
    (["count=9"], "above the maximum 5"),
    (["count=-1"], "below the minimum 0"),
    (["count=\u0663"], "use digits 0-9"),
    (["ratio=lots"], "is not a number"),
    (["ratio=nan"], "is not a finite number"),
    (["ratio=-inf"], "is not a finite number"),
    (["enabled=maybe"], "is not a yes/no value"),
    (["mode=reckless"], "is not one of fast, safe"),
    (["count"], "is not a parameter assignment"),
    (["count=1", "count=2"], "given twice"),
    (["tags=[1, 2]"], "list of text values"),
    (["name=" + "x" * 5000], "longer than 4096"),
])
def test_bad_input_is_refused_naming_the_problem_and_valid_parameters(typed, words, fragment):
    with pytest.raises(ParameterError) as caught:
        typed.parse_words(words)
    text = str(caught.value)
    assert fragment in text
    assert "valid parameters of 17_typed: name (str), count (int [0..5])" in text


def test_user_text_is_never_code(engine):
    hostile = 'x"; import os; os.system("id") #\n__import__("os")'
    result = engine.run("10_succeeds", {"label": hostile}, requester="t", source="cli")
    assert result.status == "succeeded"
    assert result.outputs["label"] == hostile


def test_secret_parameters_are_marked_and_redacted():
    specs = inspect_parameters('token: str = ""  # (secret) a token\nn: int = 1  # n', runbook="x")
    assert specs["token"]["help"] == "(secret) a token"
    book = Catalogue(FIXTURE_RUNBOOKS).get("15_prints_secrets")
    values = book.parse({"api_token": "s3cr3t-value"})
    assert values.redacted()["api_token"] == "[REDACTED:secret]"
    assert values.secret_values() == ["s3cr3t-value"]


def test_unsupported_type_is_a_clear_error():
    from clusterbook.parameters import spec_from_papermill

    with pytest.raises(ParameterError, match="supported are str, int"):
        spec_from_papermill(
            "d", {"inferred_type_name": "dict", "default": "{}", "help": ""}, runbook="x"
        )


def test_typed_values_arrive_in_the_kernel_with_their_types(engine):
    result = engine.run(
        "17_typed",
        {"name": "Zoë", "count": "4", "ratio": "0.25", "enabled": "yes", "tags": "a,b",
         "mode": "fast"},
        requester="t", source="cli",
    )
    assert result.status == "succeeded", result.error
    # JSON keeps the kinds apart: 4 not "4", 0.25 not "0.25", true not "yes", a list.
    assert result.outputs["values"] == {
        "name": "Zoë", "count": 4, "ratio": 0.25, "enabled": True, "tags": ["a", "b"],
        "mode": "fast",
    }


def test_choices_of_numbers_are_refused_when_the_runbook_is_read():
    from clusterbook.parameters import spec_from_papermill

    with pytest.raises(ParameterError, match="choices of 'size' must be strings"):
        spec_from_papermill(
            "size",
            {"inferred_type_name": "Literal[1, 2]", "default": "1", "help": ""},
            runbook="x",
        )


def test_a_cluster_changing_runbook_needs_a_cluster_name():
    book = Catalogue(FIXTURE_RUNBOOKS).get("16_changes_cluster")
    with pytest.raises(ParameterError, match="cluster must name it") as caught:
        book.parse({"cluster": ""})
    assert "cluster=NAME" in str(caught.value)
    assert book.parse({"cluster": "alpha"}).values["cluster"] == "alpha"
