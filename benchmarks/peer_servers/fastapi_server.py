"""Plain FastAPI + uvicorn: a hand-written v2 JSON infer handler around ONNX Runtime.

    python fastapi_server.py MODEL PORT NAME

What a user writes without a serving framework: parse the JSON body, run the session,
answer JSON. JSON only (no binary tensor extension). The handler is ``async`` and calls
the session inline: on one pinned core a thread-pool hop would only add work.
"""

from __future__ import annotations

import json

import numpy as np
import uvicorn
from fastapi import FastAPI, Request, Response
from onnx_session import arguments, session

DTYPES = {"FP32": np.float32}


def build(path: str, name: str) -> FastAPI:
    model = session(path)
    app = FastAPI()

    @app.get("/v2/health/ready")
    @app.get("/v2/health/live")
    async def health() -> dict:
        return {}

    @app.get("/v2/models/{model_name}/ready")
    async def ready(model_name: str) -> Response:
        return Response(status_code=200 if model_name == name else 404)

    @app.post("/v2/models/{model_name}/infer")
    async def infer(model_name: str, request: Request) -> Response:
        if model_name != name:
            return Response(json.dumps({"error": f"unknown model {model_name}"}), 404)
        try:
            payload = json.loads(await request.body())
            tensor = payload["inputs"][0]
            x = np.asarray(tensor["data"], dtype=DTYPES[tensor["datatype"]]).reshape(tensor["shape"])
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            return Response(json.dumps({"error": f"bad request: {exc!r}"}), 400)
        out = model.run(None, {"input": x})[0]
        answer = {"model_name": name, "id": payload.get("id", ""),
                  "outputs": [{"name": "output", "datatype": "FP32", "shape": list(out.shape),
                               "data": out.ravel().tolist()}]}
        return Response(json.dumps(answer), media_type="application/json")

    return app


if __name__ == "__main__":
    args = arguments(__doc__)
    uvicorn.run(build(args.model, args.name), host="127.0.0.1", port=args.port, workers=1,
                access_log=False, log_level="warning")
