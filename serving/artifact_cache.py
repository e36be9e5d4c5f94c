"""Fetch model artifacts from the control plane over HTTP into a node-local, verified cache."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from modelplane.settings import get_settings
from serving.errors import ServingError

_CHUNK = 1024 * 1024


class ArtifactFetchError(ServingError):
    """The artifact could not be downloaded or did not hash to its digest."""

    code = "artifact_fetch_failed"
    http_status = 503


def default_cache_dir() -> Path:
    """``MODELPLANE_CACHE_DIR``, else a folder under the system temp dir (node-local)."""
    return get_settings().cache_dir


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def fetch_artifact(
    url: str, digest: str, *, cache_dir: Path | None = None, token: str | None = None,
    timeout: float = 120.0,
) -> Path:
    """The local path of the artifact with ``digest``, downloading it from ``url`` if needed.

    A cached copy is re-hashed before use; a copy that no longer matches is replaced.
    Downloads go to a temporary name and are renamed only once their digest checks out.
    """
    import httpx

    folder = (cache_dir or default_cache_dir()) / "sha256" / digest[:2]
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / digest
    if target.exists():
        if _sha256(target) == digest:
            return target
        target.unlink(missing_ok=True)
    temp = folder / f".{digest}.{os.getpid()}.part"
    headers = {"authorization": f"Bearer {token}"} if token else {}
    hasher = hashlib.sha256()
    try:
        with httpx.stream("GET", url, headers=headers, timeout=timeout) as response:
            if response.status_code != 200:
                response.read()
                raise ArtifactFetchError(
                    f"downloading artifact {digest[:12]} from {url} failed with HTTP "
                    f"{response.status_code}: {response.text[:200]}",
                    detail={"url": url, "status": response.status_code},
                )
            with open(temp, "wb") as handle:
                for chunk in response.iter_bytes(_CHUNK):
                    hasher.update(chunk)
                    handle.write(chunk)
        if hasher.hexdigest() != digest:
            raise ArtifactFetchError(
                f"artifact from {url} hashes to {hasher.hexdigest()}, not {digest}",
                detail={"url": url},
            )
        os.replace(temp, target)
    except httpx.HTTPError as error:
        raise ArtifactFetchError(
            f"cannot download artifact {digest[:12]} from {url}: {type(error).__name__}: {error}",
            detail={"url": url},
        ) from None
    finally:
        temp.unlink(missing_ok=True)
    return target
