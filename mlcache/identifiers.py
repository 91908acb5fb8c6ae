"""Every identifier form users pass, reduced to plain references before any lookup.

Accepted: the entity or its handle, an id/name string, `(name, version)`, `(name, "@alias")`,
`models:/name/3`, `models:/name@alias`, `runs:/<run_id>/path/in/run`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .entities import Experiment, LoggedModel, Model, ModelVersion, Run
from .errors import EntityNotFound, InvalidIdentifier

_VERSION = re.compile(r"^[1-9][0-9]*$")
_ALIAS = re.compile(r"^[A-Za-z0-9_\-]+$")
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9_\-]+$")
_RUN_ID = RUN_ID_PATTERN
_LOGGED_ID = re.compile(r"^(?:models:/)?(m-[0-9a-f]{32})/?$")


@dataclass(frozen=True)
class ExpRef:
    """An experiment by id, by name, or by a string that may be either (id tried first)."""

    id: str | None = None
    name: str | None = None


@dataclass(frozen=True)
class ModelVersionRef:
    """A model version by number or by alias."""

    model: str
    version: str | None = None
    alias: str | None = None

    def __str__(self) -> str:
        return f"models:/{self.model}/{self.version}" if self.version else f"models:/{self.model}@{self.alias}"


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidIdentifier(f"{what} must be a string or an entity, got {type(value).__name__}: {value!r}")
    if not value.strip() or value != value.strip():
        raise InvalidIdentifier(f"{what} must be a non-empty string without surrounding spaces: {value!r}")
    return value


def exp_ref(value: Any) -> ExpRef:
    """Experiment, handle, id or name."""
    if isinstance(value, Experiment):
        return ExpRef(id=value.id, name=value.name)
    if isinstance(value, Run):
        return ExpRef(id=value.exp.id, name=value.exp.name)
    text = _text(value, "experiment")
    return ExpRef(id=text, name=text)


def run_ref(value: Any) -> tuple[str, str | None]:
    """Run, handle, run id or `runs:/<id>/path`: the run id and the path in it (if any)."""
    if isinstance(value, Run):
        return value.id, None
    text = _text(value, "run")
    if text.startswith("runs:"):
        match = re.fullmatch(r"runs:/([^/]+)(?:/(.*))?", text)
        if not match:
            raise InvalidIdentifier(f"malformed run URI {text!r}; expected runs:/<run_id>/<path>")
        run_id, path = match.group(1), (match.group(2) or "").strip("/") or None
    else:
        run_id, path = text, None
    if not _RUN_ID.fullmatch(run_id):
        raise InvalidIdentifier(f"malformed run id {run_id!r} in {text!r}")
    return run_id, path


def run_id_of(value: Any) -> str:
    """The run id of any run identifier."""
    return run_ref(value)[0]


def model_name(value: Any) -> str:
    """Model, handle, model version, name or `models:/name`."""
    if isinstance(value, Model):
        return value.name
    if isinstance(value, ModelVersion):
        return value.model.name
    text = _text(value, "model")
    if text.startswith("models:"):
        if not text.startswith("models:/") or not text[len("models:/") :] or "/" in text[len("models:/") :]:
            raise InvalidIdentifier(f"malformed model URI {text!r}; expected models:/<name>")
        return text[len("models:/") :]
    return text


def _version_or_alias(model: str, spec: Any, original: Any) -> ModelVersionRef:
    if isinstance(spec, int) and not isinstance(spec, bool):
        spec = str(spec)
    if not isinstance(spec, str):
        raise InvalidIdentifier(f"model version must be a number or '@alias' in {original!r}")
    if spec.startswith("@"):
        if not _ALIAS.fullmatch(spec[1:]):
            raise InvalidIdentifier(f"malformed alias {spec!r} in {original!r}")
        return ModelVersionRef(model=model, alias=spec[1:])
    if not _VERSION.fullmatch(spec):
        raise InvalidIdentifier(f"malformed version {spec!r} in {original!r}; expected a positive number or '@alias'")
    return ModelVersionRef(model=model, version=spec)


def model_version_ref(value: Any) -> ModelVersionRef:
    """ModelVersion, handle, `(model, version)`, `(model, "@alias")`, `models:/name/3`, `models:/name@alias`."""
    if isinstance(value, ModelVersion):
        return ModelVersionRef(model=value.model.name, version=value.version)
    if isinstance(value, tuple):
        if len(value) != 2:
            raise InvalidIdentifier(f"model version tuple must be (model, version), got {value!r}")
        return _version_or_alias(model_name(value[0]), value[1], value)
    text = _text(value, "model version")
    match = re.fullmatch(r"models:/(.+?)(?:/([^/@]+)|@([^/@]+))", text)
    if not match and re.fullmatch(r"models:/m-[^/@]*", text):
        raise EntityNotFound(
            "logged model", text.removeprefix("models:/"), "no logged model has that id (ids are m- and 32 hex digits)"
        )
    if not match:
        raise InvalidIdentifier(
            f"malformed model version {text!r}; expected models:/<name>/<version>, models:/<name>@<alias>, "
            "(name, version) or (name, '@alias')"
        )
    name, version, alias = match.groups()
    return _version_or_alias(name, version if version is not None else f"@{alias}", text)


def logged_model_id(value: Any) -> str | None:
    """The id of a logged model given as entity, `models:/m-<id>` or bare `m-<id>`; None otherwise."""
    if isinstance(value, LoggedModel):
        return value.id
    if isinstance(value, str):
        match = _LOGGED_ID.fullmatch(value)
        return match.group(1) if match else None
    return None


def require_logged_model_id(value: Any) -> str:
    found = logged_model_id(value)
    if found is None:
        raise InvalidIdentifier(
            f"not a logged model: {value!r}; expected m-<32 hex>, models:/m-<32 hex> or a LoggedModel"
        )
    return found
