"""The control plane's one error mapping: every failure answers modelplane.errors.error_body's
shape, and the client turns that body back into the class the server raised."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.exc import DataError as StoreDataError
from sqlalchemy.exc import IntegrityError as StoreIntegrityError

from control_plane.api.app import build_api
from control_plane.api.errors import RequestIdMiddleware, install_error_handlers
from control_plane.client import _error_from, _inference_error_from
from control_plane.errors import ControlPlaneError, NotFoundError, RequestSchemaError
from control_plane.schemas import ErrorBody
from serving.errors import InvalidRequestError, ServingError


@pytest.fixture
def client() -> TestClient:
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(RequestIdMiddleware)

    @app.get("/models/{name}")
    def get_model(name: str) -> None:
        raise NotFoundError(f"no model {name!r}", detail={"field": "name"})

    @app.get("/models")
    def list_models(limit: int = 10) -> list[str]:
        return []

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals")

    @app.post("/models")
    def create_model() -> None:  # a second writer that found the name free, as the first did
        raise StoreIntegrityError("INSERT INTO models (name) VALUES (secret internals)", {},
                                  Exception("duplicate key value violates unique constraint"))

    @app.put("/models")
    def store_refuses() -> None:  # PostgreSQL: a NUL, a string past its column
        raise StoreDataError("UPDATE models SET note = (secret internals)", {},
                             Exception("value too long for type character varying(128)"))

    return TestClient(app, raise_server_exceptions=False)


@pytest.mark.parametrize(("method", "path", "status", "code", "words", "detail"), [
    ("GET", "/models/ghost", 404, "not_found", "no model 'ghost'", {"field": "name"}),
    ("GET", "/models?limit=x", 422, "validation_error", "limit: Input should be",
     {"fields": ["limit"]}),
    ("GET", "/nowhere", 404, "not_found", "Not Found", {}),
    ("DELETE", "/models", 405, "method_not_allowed", "Method Not Allowed", {}),
    ("GET", "/boom", 500, "control_plane_error", "failed unexpectedly", {}),
    ("POST", "/models", 409, "conflict", "at the same time", {"retry": True}),
    ("PUT", "/models", 400, "invalid_input", "value too long",
     {"cause": "value the store cannot hold"}),
])
def test_every_failure_answers_the_one_body(client: TestClient, method: str, path: str,
                                            status: int, code: str, words: str,
                                            detail: dict[str, object]) -> None:
    response = client.request(method, path, headers={"x-request-id": "req-7"})
    assert response.status_code == status, response.text
    body = ErrorBody.model_validate(response.json())
    assert body.code == code and words in body.error, body
    assert body.detail == detail and body.request_id == "req-7"
    assert response.headers["x-request-id"] == "req-7"
    assert "secret internals" not in response.text


def test_the_openapi_document_declares_the_body_for_every_error() -> None:
    document = build_api(None).openapi()  # type: ignore[arg-type]
    for operations in document["paths"].values():
        for operation in operations.values():
            for status in ("4XX", "5XX"):
                schema = operation["responses"][status]["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorBody"}
    assert "HTTPValidationError" not in document["components"]["schemas"]


def test_the_client_raises_the_class_the_body_names(client: TestClient) -> None:
    error = _error_from(client.get("/models?limit=x"))
    assert type(error) is RequestSchemaError and error.message.startswith("limit: ")
    assert error.detail == {"fields": ["limit"], "status": 422, "code": "validation_error"}
    served = httpx.Response(400, json={"error": "shape [2] is not [1, 4]", "code": "invalid_request",
                                       "request_id": "r", "detail": {"field": "inputs.x"}})
    refused = _inference_error_from(served)
    assert type(refused) is InvalidRequestError and refused.message == "shape [2] is not [1, 4]"
    assert refused.detail["field"] == "inputs.x"
    # A proxy's answer is not ours: its text is the message and the base class carries it.
    proxied = httpx.Response(502, text="Bad Gateway")
    assert type(_error_from(proxied)) is ControlPlaneError
    assert type(_inference_error_from(proxied)) is ServingError
    assert _inference_error_from(proxied).message == "Bad Gateway"


def test_an_answer_that_says_ask_again_is_not_kept_for_its_idempotency_key(
        client: TestClient) -> None:
    """A write that lost a race on a constraint may succeed when sent again: its key must
    not replay the 409 for ever. A plain refusal is kept (replayed, it is the same)."""
    import asyncio

    from control_plane.api.idempotency_guard import _Answer

    async def answered(response: httpx.Response) -> object:
        async def sent(message: object) -> None:
            pass

        async def settled(reply: object) -> None:
            pass

        answer = _Answer(sent, settled)
        await answer.send({"type": "http.response.start", "status": response.status_code,
                           "headers": [(k.encode(), v.encode()) for k, v in response.headers.items()]})
        await answer.send({"type": "http.response.body", "body": response.content})
        return answer.reply()

    raced, refused = client.post("/models"), client.get("/models/ghost")
    assert raced.status_code == 409 and raced.headers["retry-after"] == "0"
    assert asyncio.run(answered(raced)) is None
    assert asyncio.run(answered(refused)) is not None


def test_no_page_of_the_api_loads_scripts_from_elsewhere() -> None:
    """FastAPI's Swagger UI and ReDoc pages load their scripts from a public CDN: on the
    console's origin, such a script could read the signed-in user's token."""
    client = TestClient(build_api(None), raise_server_exceptions=False)  # type: ignore[arg-type]
    for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        assert client.get(path).status_code == 404
    assert client.get("/openapi.json").status_code == 200
