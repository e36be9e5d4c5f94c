"""The champion a pipeline run judges its candidate against.

It is the version of the run's model taking the most traffic on the pipeline's endpoint
when the run first looks (its ``validate_data`` stage, or its training stage's first
pass when there is no data section), and it stays that version for the whole run: kept
as ``model:version`` (or null: none) under ``champion`` in that stage's inputs, and read
from there by the stages after it. Looked up again by each stage, it moved under the
run's feet. An endpoint following an alias the training job points starts rolling the
candidate out as soon as it is registered; once the candidate took the most traffic, the
evaluation found "the champion" to be the candidate itself and judged no margin, and a
benchmark stage resumed after the champion changed asked for one version's benchmark
under another's number.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from control_plane.pipelines.stages import StageContext

PIN = "champion"


def serving_champion(services: Any, endpoint: str, model: str) -> Any | None:
    """The version of ``model`` taking the most traffic on ``endpoint`` now, or None."""
    from control_plane.errors import NotFoundError

    try:
        current = services.deployments.get(endpoint)
    except NotFoundError:
        return None
    live = [route for route in current.routes if route.weight > 0 and not route.shadow]
    if not live or current.model != model:
        return None
    return services.registry.get_version(model, max(live, key=lambda r: r.weight).version)


def pinned(context: StageContext) -> tuple[bool, str | None]:
    """(whether a stage before this one pinned the run's champion, the pin)."""
    for stage in context.run.stages:
        if stage.name == context.record.name:
            break
        if PIN in stage.inputs:
            return True, stage.inputs[PIN]
    return False, None


def pin_of(version: Any | None) -> str | None:
    return f"{version.model}:{version.version}" if version is not None else None


def run_champion(services: Any, context: StageContext) -> Any | None:
    """The run's champion (a registry version), or None when the run has none. A run
    begun before champions were pinned looks it up now, as it did then."""
    found, pin = pinned(context)
    if not found:
        return serving_champion(services, context.spec.deploy.endpoint, context.spec.model_name)
    if pin is None:
        return None
    model, _, number = str(pin).rpartition(":")
    return services.registry.get_version(model, int(number))
