"""Read a job spec from YAML into a :class:`~training.schemas.JobSpec`, or say what is wrong.

Every problem becomes one :class:`InvalidJobSpecError` whose message lists each bad field
by its dotted path (``hyperparameters.learning_rate: must be greater than 0 (got -0.1)``)
and whose ``detail["field"]`` names the first.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from training.checkpoints import is_run_id
from training.errors import InvalidJobSpecError
from training.schemas import FieldError, JobSpec


def load_job_spec(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> JobSpec:
    """Load, validate and resolve a spec file; local paths in it are relative to the file.

    ``overrides`` are ``section.field=value`` settings applied over the file before it is
    validated (``hyperparameters.epochs=2``); values are read as YAML (``2``, ``auto``, ``[32]``).
    """
    source = Path(path)
    try:
        text = source.read_text()
    except OSError as error:
        raise InvalidJobSpecError(
            f"cannot read the job spec {source}: {error.strerror or error}",
            detail={"field": "config", "path": str(source)},
        ) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        raise InvalidJobSpecError(
            f"{source} is not valid YAML{where}: {problem}",
            detail={"field": "config", "path": str(source)},
        ) from None
    if overrides:
        raw = apply_overrides(raw, overrides)
    spec = parse_job_spec(raw, source=str(source))
    refuse_credentials_in(spec)
    return resolve_paths(spec, source.parent)


def refuse_credentials_in(spec: JobSpec) -> None:
    """InvalidJobSpecError where a location the spec names holds a credential: the run
    keeps them (the dataset tag, its parameters, the job's log), which every reader sees.
    Checked where a spec comes in (a file, a pipeline applied), not where a stored one is
    read back."""
    from modelplane.uri_credentials import credential_problem

    for field, uri in located_fields(spec):
        if (problem := credential_problem(field, uri)) is not None:
            raise InvalidJobSpecError(problem, detail={"field": field})


def located_fields(spec: JobSpec) -> tuple[tuple[str, str | None], ...]:
    """The spec's fields that name a location (a path or a URI), by dotted name."""
    return (("data.path", spec.data.path),
            ("checkpoint.storage_path", spec.checkpoint.storage_path),
            ("checkpoint.resume_from", spec.checkpoint.resume_from))


def apply_overrides(raw: Any, overrides: Sequence[str]) -> Any:
    """``raw`` with each ``dotted.field=value`` set; an override that is not one is an error."""
    if not isinstance(raw, dict):
        return raw  # parse_job_spec says what is wrong with it
    result = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise InvalidJobSpecError(
                f"--set {item!r}: give section.field=value, e.g. hyperparameters.epochs=2",
                detail={"field": "--set"},
            )
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        target = result
        for part in parts[:-1]:
            if not isinstance(target.get(part), dict):
                target[part] = {}
            target = target[part]
        target[parts[-1]] = value
    return result


def parse_job_spec(raw: Any, *, source: str = "job spec") -> JobSpec:
    """Validate an already-parsed mapping."""
    if not isinstance(raw, dict):
        raise InvalidJobSpecError(
            f"{source} must be a mapping with experiment, model and data sections, "
            f"not {type(raw).__name__}",
            detail={"field": "config"},
        )
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as error:
        problems = [_describe(item) for item in error.errors()]
        lines = "\n".join(f"  {field}: {message}" for field, message in problems)
        raise InvalidJobSpecError(
            f"{source} is invalid:\n{lines}",
            detail={"field": problems[0][0],
                    "errors": [{"field": f, "message": m} for f, m in problems]},
        ) from None


def resolve_paths(spec: JobSpec, base: Path) -> JobSpec:
    """Make local paths absolute, relative to ``base`` (the spec file's folder)."""
    changes: dict[str, Any] = {}
    if spec.data.path is not None and _is_local(spec.data.path):
        changes["data"] = spec.data.model_copy(update={"path": str(_absolute(spec.data.path, base))})
    storage = spec.checkpoint.storage_path
    resume = spec.checkpoint.resume_from
    updates: dict[str, Any] = {}
    if storage is not None and _is_local(storage):
        updates["storage_path"] = str(_absolute(storage, base))
    if resume is not None and _is_local(resume) and not is_run_id(resume):
        updates["resume_from"] = str(_absolute(resume, base))
    if updates:
        changes["checkpoint"] = spec.checkpoint.model_copy(update=updates)
    return spec.model_copy(update=changes) if changes else spec


def dump_job_spec(spec: JobSpec) -> str:
    """The spec as YAML, defaults included (what the submitted job will run)."""
    return yaml.safe_dump(spec.model_dump(mode="json", exclude_none=True), sort_keys=False)


def _is_local(location: str) -> bool:
    return "://" not in location


def _absolute(location: str, base: Path) -> Path:
    path = Path(location).expanduser()
    return path if path.is_absolute() else (base / path).absolute()


def _describe(error: Any) -> tuple[str, str]:
    """(dotted field, message) for one pydantic error."""
    location = [part for part in error["loc"] if not _is_union_tag(part)]
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, FieldError):
        return _dotted([*location, *cause.field.split(".")]), cause.message
    field = _dotted(location) or "spec"
    kind = error["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_fields(location[:-1])
        hint = f"; allowed here: {', '.join(allowed)}" if allowed else ""
        return field, f"unknown field (check the spelling){hint}"
    if kind == "missing":
        return field, "required field is missing"
    message = str(error["msg"]).removeprefix("Value error, ")
    value = error.get("input")
    if isinstance(value, str | int | float | bool) and kind != "value_error":
        message += f" (got {value!r})"
    return field, message


def _dotted(parts: list[Any]) -> str:
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _is_union_tag(part: Any) -> bool:
    # pydantic puts the chosen union member (e.g. "tuple[int, int, int]") into locations.
    return isinstance(part, str) and ("[" in part or part in {"int", "float", "str", "none"})


def _allowed_fields(location: list[Any]) -> list[str]:
    model: type[BaseModel] = JobSpec
    for part in location:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None) if field else None
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        nested = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if nested is None:
            return []
        model = nested
    return sorted(model.model_fields)
