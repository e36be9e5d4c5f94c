"""The champion a pipeline run judges its candidate against.

It is the version of the run's model taking the most traffic on the pipeline's endpoint
when a stage looks, unless that is the run's own candidate: an endpoint following an
alias the training job points starts rolling the candidate out as soon as it is
registered, and once the candidate took the lead, the evaluation found "the champion" to
be the candidate itself and judged no margin. The champion is then the version that
served when the run began, pinned by the run's first look (its ``validate_data`` stage,
or its training stage's first pass when there is no data section) as ``model:version``
(or null: none) under ``champion`` in that stage's inputs.

The benchmark stage keeps the champion it began measuring in its own progress: resumed
after the champion changed, it asked for one version's benchmark under another's number.
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
    """(whether a stage before this one pinned the version serving when the run began,
    the pin)."""
    for stage in context.run.stages:
        if stage.name == context.record.name:
            break
        if PIN in stage.inputs:
            return True, stage.inputs[PIN]
    return False, None


def pin_of(version: Any | None) -> str | None:
    return f"{version.model}:{version.version}" if version is not None else None


def pinned_version(services: Any, pin: str | None) -> Any | None:
    """The registry version a pin names (None for none); one deleted since is an error
    saying so, never "no champion": with none, the candidate faces the thresholds alone."""
    from control_plane.errors import NotFoundError

    if pin is None:
        return None
    model, _, number = str(pin).rpartition(":")
    try:
        return services.registry.get_version(model, int(number))
    except NotFoundError as error:
        raise NotFoundError(
            f"the champion {pin}, which served when this run began and which its candidate "
            "took over from, was deleted since: there is no version left to judge the "
            "candidate against; start a new run", detail={"champion": pin}) from error


def pin_at_start(services: Any, context: StageContext) -> str | None:
    """The pin a stage before any candidate records: an earlier stage's where one looked,
    else the version serving now."""
    found, pin = pinned(context)
    if found:
        return pin
    spec = context.spec
    return pin_of(serving_champion(services, spec.deploy.endpoint, spec.model_name))


def run_champion(services: Any, context: StageContext) -> Any | None:
    """The version this stage judges the run's candidate against, or None."""
    spec = context.spec
    current = serving_champion(services, spec.deploy.endpoint, spec.model_name)
    candidate = context.candidate
    if current is not None and (candidate is None or current.version != candidate[1]):
        return current
    found, pin = pinned(context)
    if not found:  # a run begun before champions were pinned
        return None
    return pinned_version(services, pin)
