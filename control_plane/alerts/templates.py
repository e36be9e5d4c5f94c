"""Alert summary templates: named fields only, checked when a rule is saved, rendered safely.

A template is plain text with ``{field}`` placeholders from :data:`TEMPLATE_FIELDS`.
Anything ``str.format`` would do beyond that is refused: a format spec
(``{endpoint:>999999999}`` asks for gigabytes), a conversion (``{endpoint!r}``), attribute
or index access (``{endpoint.x}``, ``{endpoint[0]}``) and positional fields (``{0}``,
``{}``). Rendering never raises and never calls ``str.format`` on the template, so a rule
stored before this check existed still renders (its bad placeholders make it fall back to
the default summary) instead of crashing the evaluator on every restart.
"""

from __future__ import annotations

from string import Formatter

TEMPLATE_FIELDS = ("endpoint", "version", "metric", "value", "comparison", "threshold", "details")
MAX_RENDERED_CHARS = 2000  # a summary repeating {details} must not grow without bound


def template_problem(template: str) -> str | None:
    """Why ``template`` is not an acceptable summary template, or None when it is."""
    try:
        pieces = list(Formatter().parse(template))
    except ValueError as error:
        return f"{error}; write a literal brace as {{{{ or }}}}"
    allowed = ", ".join("{" + name + "}" for name in TEMPLATE_FIELDS)
    for _, name, spec, conversion in pieces:
        if name is None:
            continue
        if name not in TEMPLATE_FIELDS:
            return f"{{{name}}} is not a template field; use only {allowed}"
        if spec or conversion:
            return (f"{{{name}}} carries a format spec or conversion; write the bare "
                    f"field {{{name}}}")
    return None


def render_template(template: str, fields: dict[str, str]) -> str | None:
    """``template`` with its fields filled in, or None when it is not a valid template."""
    try:
        parts: list[str] = []
        for literal, name, spec, conversion in Formatter().parse(template):
            parts.append(literal)
            if name is None:
                continue
            if name not in fields or spec or conversion:
                return None
            parts.append(str(fields[name]))
        return "".join(parts)[:MAX_RENDERED_CHARS]
    except Exception:  # whatever a stored template holds, rendering must not raise
        return None
