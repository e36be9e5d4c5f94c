"""What every peer server script shares: its arguments and an ONNX Runtime session on one thread.

Imported by the scripts beside it (a script's folder is first on ``sys.path``), so it uses
nothing but the standard library, numpy and onnxruntime, which every peer's venv has.
"""

from __future__ import annotations

import argparse


def arguments(description: str) -> argparse.Namespace:
    """``MODEL PORT NAME``: the ONNX file, the HTTP port and the model's name on the wire."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("model", help="path of the ONNX model")
    parser.add_argument("port", type=int, help="HTTP port for the v2 REST API")
    parser.add_argument("name", help="model name in /v2/models/<name>/infer")
    return parser.parse_args()


def session(path: str):
    """An InferenceSession with one intra-op and one inter-op thread, on the CPU."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def free_port() -> int:
    """A loopback port nothing listens on, for the side ports (gRPC, metrics) a peer insists on."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
