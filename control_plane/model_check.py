"""The registration check: a version is accepted only once it loads and answers as its
manifest says, so a broken model is refused here rather than found by a replica.

A plain ONNX graph is loaded in ONNX Runtime in this process and its signature compared
with the manifest's. Anything that runs code (a Python model, steps around a graph) or
torch (TorchScript) is loaded in a scratch process, the way a replica would load it, and
run on the manifest's example inputs (or rows drawn from its signature); every output is
checked against the declared signature. The scratch process is not a sandbox: it runs
the registrant's code with this machine's user, in an emptied environment (no tokens, no
store URL) and a temporary folder, for at most ``timeout_s``.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import serving
from control_plane.errors import InvalidArtifactError
from control_plane.onnx_check import check_signature, signature_of
from control_plane.schemas import ModelManifest, Signature
from serving.runners.requirements import PIP_OPTIONS

CHECK_TIMEOUT_S = 180.0
_KEPT_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "SYSTEMROOT", "CUDA_VISIBLE_DEVICES")


def check_version(manifest: ModelManifest, digest: str, artifact: bytes, *,
                  timeout_s: float = CHECK_TIMEOUT_S) -> None:
    """Raise InvalidArtifactError naming the field (and the model's own traceback) when the
    artifact does not load or does not answer as ``manifest`` declares."""
    if manifest.kind == "onnx" and manifest.code is None:
        check_signature(manifest.signature, signature_of(artifact))
        return
    if manifest.kind in ("torchscript", "torch_export") and not _is_zip(artifact):
        raise InvalidArtifactError(f"the artifact is not a {manifest.kind} file (torch saves "
                                   "a zip archive)", detail={"field": "artifact_digest"})
    if manifest.code is not None:
        _check_archive(manifest, artifact)
    result = run_scratch_check(manifest, digest, artifact, timeout_s=timeout_s)
    if not result.get("ok"):
        stage = {"load": "loading it", "warmup": "warming it up as a replica does (one row of "
                 "zeros, empty strings)"}.get(result.get("stage"), "running it on example inputs")
        field = result.get("field") or "artifact_digest"
        raise InvalidArtifactError(
            f"{field}: {stage} failed: {result.get('error')}",
            detail={"field": field, "stage": result.get("stage"),
                    "traceback": result.get("traceback", "")})


def _is_zip(data: bytes) -> bool:
    return data[:4] == b"PK\x03\x04"


def _check_archive(manifest: ModelManifest, artifact: bytes) -> None:
    """The archive opens, unpacks safely and holds the graph its steps go around."""
    import io

    from serving.runners.archive import ArchiveError, check_members

    if not _is_zip(artifact):
        raise InvalidArtifactError(
            "a version with code is a zip archive of its folder (`modelplane models register` "
            "packs one); this artifact is not", detail={"field": "artifact_digest"})
    try:
        with zipfile.ZipFile(io.BytesIO(artifact)) as archive:
            members = {m.filename for m in check_members(archive)}
    except (zipfile.BadZipFile, ArchiveError) as error:
        raise InvalidArtifactError(f"the archive cannot be unpacked: {error}",
                                   detail={"field": "artifact_digest"}) from None
    code = manifest.code
    if code is not None and code.is_steps:
        if code.graph not in members:
            raise InvalidArtifactError(f"manifest.code.graph: the archive has no {code.graph}",
                                       detail={"field": "manifest.code.graph"})
        with zipfile.ZipFile(io.BytesIO(artifact)) as archive:
            graph = archive.read(code.graph)
        inner = Signature(
            inputs=[s.model_dump() for s in code.graph_inputs] if code.graph_inputs
            else manifest.signature.inputs,
            outputs=[s.model_dump() for s in code.graph_outputs] if code.graph_outputs
            else manifest.signature.outputs)
        try:
            check_signature(inner, signature_of(graph))
        except InvalidArtifactError as error:
            where = "manifest.code.graph_" if code.graph_inputs or code.graph_outputs else \
                "manifest.signature."
            raise InvalidArtifactError(
                f"{error} (the graph's own signature is code.graph_inputs/graph_outputs when "
                f"steps change it; checked against {where}…)", detail=error.detail) from None


def run_scratch_check(manifest: ModelManifest, digest: str, artifact: bytes, *,
                      timeout_s: float) -> dict[str, Any]:
    """Load and run the version in a scratch process; its verdict as a dict."""
    version = {
        "version": 1, "model": "registration-check", "artifact_url": "file:///unused",
        "digest": digest, "kind": manifest.kind,
        "code": manifest.code.model_dump() if manifest.code else None,
        "inputs": [s.model_dump() for s in manifest.signature.inputs],
        "outputs": [s.model_dump() for s in manifest.signature.outputs],
        "task": manifest.task,
    }
    with tempfile.TemporaryDirectory(prefix="modelplane-check-") as scratch:
        folder = Path(scratch)
        (folder / "artifact").mkdir()
        artifact_path = folder / "artifact" / digest
        artifact_path.write_bytes(artifact)
        request, result = folder / "request.json", folder / "result.json"
        request.write_text(json.dumps({"version": version, "artifact": str(artifact_path),
                                       "examples": manifest.example_inputs}))
        env = {k: os.environ[k] for k in _KEPT_ENV if k in os.environ}
        paths = [str(Path(serving.__file__).resolve().parents[1])]
        if manifest.code is not None and manifest.code.requirements:
            paths.append(str(install_requirements(manifest.code.requirements, folder,
                                                  timeout_s=timeout_s)))
        env.update(HOME=str(folder), TMPDIR=str(folder), OMP_NUM_THREADS="1",
                   PYTHONPATH=os.pathsep.join(paths), PYTHONDONTWRITEBYTECODE="1")
        output = folder / "output.log"
        with open(output, "wb") as log:
            # Its own session, so whatever the model starts is stopped with it; what it
            # prints goes to a file (read back bounded), never into this process's memory.
            process = subprocess.Popen(
                [sys.executable, "-m", "serving.runners.check", str(request), str(result)],
                cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)
            try:
                returncode = process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                _kill_group(process)
                raise InvalidArtifactError(
                    f"the registration check did not finish in {timeout_s:g}s (loading the "
                    "model and running it on example inputs); a model must load and answer "
                    "within it", detail={"field": "artifact_digest", "stage": "timeout"}) from None
            finally:
                _kill_group(process)
        if not result.is_file():
            raise InvalidArtifactError(
                f"the registration check's process ended ({returncode}) without a verdict: "
                f"{_tail(output)}", detail={"field": "artifact_digest", "stage": "crashed"})
        return json.loads(result.read_text()[:1_000_000])  # type: ignore[no-any-return]


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    import signal

    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _tail(path: Path, limit: int = 2000) -> str:
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - limit))
        return handle.read().decode("utf-8", "replace")


def install_requirements(requirements: list[str], folder: Path, *, timeout_s: float) -> Path:
    """pip-install ``requirements`` into a folder of their own (what the replica's runtime
    environment will hold beside the platform's packages); InvalidArtifactError with pip's
    own words when they cannot be installed. pip keeps its configuration (index, proxy,
    certificates): it is the operator's. Wheels only, so no package's build code runs
    here; what a wheel's code does once imported is the check's (and the replicas') risk."""
    target = folder / "requirements"
    env = {k: v for k, v in os.environ.items()
           if k.startswith("PIP_") or k in (*_KEPT_ENV, "HTTP_PROXY", "HTTPS_PROXY",
                                               "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")}
    env["HOME"] = str(folder)
    try:
        # Wheels only: a source package would run its own build code here.
        result = subprocess.run(
            [sys.executable, "-m", "pip", "install", *PIP_OPTIONS, "--target", str(target),
             *requirements],
            cwd=folder, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise InvalidArtifactError(
            f"manifest.code.requirements: installing {requirements} took over {timeout_s:g}s",
            detail={"field": "manifest.code.requirements", "stage": "requirements"}) from None
    if result.returncode != 0:
        said = [line for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        raise InvalidArtifactError(
            f"manifest.code.requirements: pip could not install {requirements}: "
            + " ".join(said[-3:])[:1500],
            detail={"field": "manifest.code.requirements", "stage": "requirements",
                    "pip": "\n".join(said[-40:])})
    return target
