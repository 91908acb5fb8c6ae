"""Every identifier form reduces to the same reference; malformed ones fail clearly."""

from __future__ import annotations

import pytest

from mlcache.entities import Experiment, Model, ModelVersion, Run
from mlcache.errors import InvalidIdentifier
from mlcache.identifiers import ExpRef, ModelVersionRef, exp_ref, model_name, model_version_ref, run_ref
from mlcache.names import UnsafePath, safe_relative_path

EXP = Experiment(id="7", name="exp")
RUN = Run(id="abc123", exp=EXP)
MODEL = Model(name="fraud")
MV = ModelVersion(model=MODEL, version=3, source="s3://b/x", run_id="abc123")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (MV, ModelVersionRef("fraud", version="3")),
        (("fraud", "3"), ModelVersionRef("fraud", version="3")),
        (("fraud", 3), ModelVersionRef("fraud", version="3")),
        ((MODEL, 3), ModelVersionRef("fraud", version="3")),
        (("fraud", "@champion"), ModelVersionRef("fraud", alias="champion")),
        ("models:/fraud/3", ModelVersionRef("fraud", version="3")),
        ("models:/fraud@champion", ModelVersionRef("fraud", alias="champion")),
        ("models:/team/fraud@champion", ModelVersionRef("team/fraud", alias="champion")),
    ],
)
def test_model_version_forms(value: object, expected: ModelVersionRef) -> None:
    assert model_version_ref(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("models:/fraud", "malformed model version 'models:/fraud'"),
        ("models:/fraud/0", "malformed version '0'"),
        ("models:/fraud/latest", "malformed version 'latest'"),
        ("fraud", "malformed model version 'fraud'"),
        (("fraud", "x"), "malformed version 'x'"),
        (("fraud", "@bad alias"), "malformed alias '@bad alias'"),
        (("fraud", "3", "x"), "must be (model, version)"),
        (("fraud", 3.0), "must be a number or '@alias'"),
        (42, "must be a string or an entity, got int"),
        ("", "non-empty string"),
    ],
)
def test_malformed_model_versions(value: object, message: str) -> None:
    with pytest.raises(InvalidIdentifier) as info:
        model_version_ref(value)
    assert message in str(info.value)


def test_run_forms() -> None:
    assert run_ref(RUN) == ("abc123", None)
    assert run_ref("abc123") == ("abc123", None)
    assert run_ref("runs:/abc123/model/data") == ("abc123", "model/data")
    assert run_ref("runs:/abc123") == ("abc123", None)
    for bad in ("runs:/", "runs:abc", "abc/def", "a b", " "):
        with pytest.raises(InvalidIdentifier):
            run_ref(bad)


def test_exp_and_model_forms() -> None:
    assert exp_ref(EXP) == ExpRef(id="7", name="exp")
    assert exp_ref("7") == ExpRef(id="7", name="7")
    assert exp_ref(RUN) == ExpRef(id="7", name="exp")
    assert model_name(MODEL) == model_name(MV) == model_name("models:/fraud") == model_name("fraud") == "fraud"
    with pytest.raises(InvalidIdentifier, match="expected models:/<name>"):
        model_name("models:/fraud/3")


def test_path_in_run_is_derived_from_the_source() -> None:
    run = Run(id="r1", exp=EXP, repo="s3://bucket/1/r1/artifacts")
    assert (
        ModelVersion(
            model=MODEL, version="1", run=run, run_id="r1", source="s3://bucket/1/r1/artifacts/model/"
        ).path_in_run
        == "model"
    )
    assert ModelVersion(model=MODEL, version="1", run_id="r1", source="runs:/r1/a/b").path_in_run == "a/b"
    assert ModelVersion(model=MODEL, version="1", run=run, run_id="r1", source="s3://other/model").path_in_run is None


@pytest.mark.parametrize("bad", ["", "/", "/etc/passwd", "../x", "a/../../b", "a\\b", "C:/x", ".", "./"])
def test_unsafe_paths_are_refused(bad: str) -> None:
    with pytest.raises(UnsafePath):
        safe_relative_path(bad)


def test_safe_paths_are_normalised() -> None:
    assert safe_relative_path("a/./b//c/") == "a/b/c"
