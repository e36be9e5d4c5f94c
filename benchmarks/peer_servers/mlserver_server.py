"""MLServer with a custom runtime (an ``MLModel`` subclass) that calls ONNX Runtime.

    python mlserver_server.py MODEL PORT NAME

Started the way ``mlserver start`` starts it (uvloop, then ``MLServer.start``), with
``parallel_workers: 0`` so inference runs in the server's own process rather than a
worker pool. Adaptive batching is off (MLServer's default); metrics stay on (the default)
on a free port of their own, as does gRPC. One setting differs from the defaults: ``debug``
is off (it turns on an access log line per request).
"""

from __future__ import annotations

import asyncio
import os

from mlserver import MLModel, MLServer
from mlserver.codecs import NumpyCodec
from mlserver.settings import ModelParameters, ModelSettings, Settings
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import install_uvloop_event_loop
from onnx_session import arguments, free_port, session


class OnnxRuntimeModel(MLModel):
    """The model's ONNX file (``parameters.uri``) on one ORT thread."""

    async def load(self) -> bool:
        self._session = session(self.settings.parameters.uri)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0])
        out = self._session.run(None, {"input": x})[0]
        return InferenceResponse(model_name=self.name, id=payload.id,
                                 outputs=[NumpyCodec.encode_output("output", out)])


async def serve(model: str, port: int, name: str) -> None:
    settings = Settings(
        host="127.0.0.1", http_port=port, grpc_port=free_port(), metrics_port=free_port(),
        parallel_workers=0, debug=False, load_models_at_startup=False,
        # Prometheus' multiprocess files go under the working folder the benchmark cleans up.
        metrics_dir=os.path.join(os.getcwd(), ".metrics"))
    model_settings = ModelSettings(name=name, implementation=OnnxRuntimeModel,
                                   parameters=ModelParameters(uri=model))
    server = MLServer(settings)  # inside the loop: it installs its signal handlers on it
    await server.start([model_settings])


if __name__ == "__main__":
    args = arguments(__doc__)
    install_uvloop_event_loop()
    asyncio.run(serve(args.model, args.port, args.name))
