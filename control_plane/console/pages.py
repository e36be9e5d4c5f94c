"""Routes of the console: one HTML shell per page and the static assets they load.

A shell names its page, the parameters in its path (escaped into ``data-`` attributes)
and its script; the script does the rest against the REST API. Pages answer with a
Content-Security-Policy that lets the browser load and call nothing but this origin.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse

from control_plane.errors import NotFoundError
from control_plane.schemas import MAX_INT

HERE = Path(__file__).parent
STATIC = HERE / "static"
# Scripts, styles and inline SVG come from this origin only; so do API calls.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'")
SECURITY_HEADERS = {"content-security-policy": CSP, "x-content-type-options": "nosniff",
                    "referrer-policy": "no-referrer", "cache-control": "no-cache"}
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
STATIC_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*\.(js|css|svg)$")


@dataclass(frozen=True)
class Page:
    """One page of the console: its title, its script and the nav entry it belongs to."""

    title: str
    script: str
    nav: str


PAGES: dict[str, Page] = {
    "endpoints": Page("Endpoints", "endpoints.js", "endpoints"),
    "rollouts": Page("Rollouts", "rollouts.js", "rollouts"),
    "rollout": Page("Rollout", "rollout.js", "rollouts"),
    "monitoring": Page("Monitoring", "monitoring.js", "monitoring"),
    "models": Page("Registry", "models.js", "models"),
    "model": Page("Model", "model.js", "models"),
    "version": Page("Model version", "version.js", "models"),
    "alerts": Page("Alerts", "alerts.js", "alerts"),
    "experiments": Page("Experiments", "experiments.js", "experiments"),
    "signin": Page("Sign in", "signin.js", "signin"),
}
NAV = [("endpoints", "Endpoints"), ("rollouts", "Rollouts"), ("monitoring", "Monitoring"),
       ("models", "Registry"), ("alerts", "Alerts"), ("experiments", "Experiments")]

RolloutNumber = Annotated[int, PathParam(ge=1, le=MAX_INT)]
VersionNumber = Annotated[int, PathParam(ge=1, le=MAX_INT)]


@cache
def _templates() -> Any:
    # Imported here: the API answers without Jinja2 loaded until a page is asked for.
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    return Environment(loader=FileSystemLoader(HERE / "templates"),
                       autoescape=select_autoescape(default=True), auto_reload=False)


def render(request: Request, page: str, **params: str | int) -> HTMLResponse:
    """The shell of ``page`` with ``params`` for its script (as ``data-`` attributes)."""
    spec = PAGES[page]
    # Links are absolute from where the API is mounted (/api under Serve and uvicorn).
    ui = f"{request.scope.get('root_path', '').rstrip('/')}/ui"
    html = _templates().get_template("page.html").render(
        page=page, spec=spec, nav=NAV, ui=ui, params={k: str(v) for k, v in params.items()})
    return HTMLResponse(html, headers=SECURITY_HEADERS)


def home(request: Request) -> HTMLResponse:
    return render(request, "endpoints")


def endpoints(request: Request) -> HTMLResponse:
    return render(request, "endpoints")


def rollouts(request: Request) -> HTMLResponse:
    return render(request, "rollouts")


def rollout(request: Request, rollout_id: RolloutNumber) -> HTMLResponse:
    return render(request, "rollout", rollout=rollout_id)


def monitoring(request: Request) -> HTMLResponse:
    return render(request, "monitoring")


def models(request: Request) -> HTMLResponse:
    return render(request, "models")


def model(request: Request, name: str) -> HTMLResponse:
    return render(request, "model", model=name)


def version(request: Request, name: str, version: VersionNumber) -> HTMLResponse:
    return render(request, "version", model=name, version=version)


def alerts(request: Request) -> HTMLResponse:
    return render(request, "alerts")


def experiments(request: Request) -> HTMLResponse:
    return render(request, "experiments")


def signin(request: Request) -> HTMLResponse:
    return render(request, "signin")


def static(name: str) -> FileResponse:
    """An asset of this package by its plain file name (no folders, so no way out of it)."""
    path = STATIC / name
    if not STATIC_NAME.fullmatch(name) or not path.is_file():
        raise NotFoundError(f"the console has no asset {name!r}", detail={"field": "name"})
    return FileResponse(path, media_type=STATIC_TYPES[path.suffix],
                        headers={"x-content-type-options": "nosniff", "cache-control": "no-cache"})


ROUTES = [("", home), ("/endpoints", endpoints), ("/rollouts", rollouts),
          ("/rollouts/{rollout_id}", rollout), ("/monitoring", monitoring), ("/models", models),
          ("/models/{name}", model), ("/models/{name}/versions/{version}", version),
          ("/alerts", alerts), ("/experiments", experiments), ("/signin", signin),
          ("/static/{name}", static)]


def install_console(app: FastAPI, prefix: str = "/ui") -> None:
    """Add the console's routes to ``app`` under ``prefix``, outside its OpenAPI document.

    Added on the app itself rather than through an included router, so that they sit in
    ``app.routes`` beside the API's own hidden routes, where the access tests find them.
    """
    for path, handler in ROUTES:
        app.add_api_route(prefix + path, handler, methods=["GET"], include_in_schema=False,
                          response_class=HTMLResponse if handler is not static else FileResponse)
