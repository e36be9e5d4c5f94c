"""KServe's ModelServer with a ``kserve.Model`` subclass that calls ONNX Runtime.

    python kserve_server.py MODEL PORT NAME

One uvicorn worker (``ModelServer(workers=1)``), the v2 REST protocol, gRPC off. The
per-request log lines are off: KServe's latency line (``enable_latency_logging``), uvicorn's
access log and the two lines per request of KServe's timing middleware (``kserve.trace``;
the middleware itself always runs). Prometheus histograms stay on (KServe's default).
"""

from __future__ import annotations

import logging

import kserve
from kserve import InferOutput, InferRequest, InferResponse
from onnx_session import arguments, session


class OnnxRuntimeModel(kserve.Model):
    """The ONNX file on one ORT thread, answering v2 infer requests."""

    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.path = path
        self.load()

    def load(self) -> bool:
        self.session = session(self.path)
        self.ready = True
        return self.ready

    async def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        x = payload.inputs[0].as_numpy()
        out = self.session.run(None, {"input": x})[0]
        output = InferOutput(name="output", shape=list(out.shape), datatype="FP32")
        output.set_data_from_numpy(out, binary_data=payload.use_binary_outputs)
        return InferResponse(model_name=self.name, infer_outputs=[output],
                             response_id=payload.id or "",
                             use_binary_outputs=payload.use_binary_outputs,
                             requested_outputs=payload.request_outputs)


if __name__ == "__main__":
    args = arguments(__doc__)
    model = OnnxRuntimeModel(args.name, args.model)
    server = kserve.ModelServer(http_port=args.port, workers=1, enable_grpc=False,
                                enable_latency_logging=False)
    # After KServe's own logging setup, which the constructor runs.
    for logger in ("uvicorn.access", "kserve.trace"):
        logging.getLogger(logger).setLevel(logging.WARNING)
    server.start([model])
