"""Fetch model artifacts from the control plane over HTTP into a node-local, verified cache."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from modelplane.durable import remove_left_by_the_dead
from modelplane.settings import get_settings
from serving.errors import ServingError

_CHUNK = 1024 * 1024


class ArtifactFetchError(ServingError):
    """The artifact could not be downloaded or did not hash to its digest."""

    code = "artifact_fetch_failed"
    http_status = 503


def default_cache_dir() -> Path:
    """``MODELPLANE_CACHE_DIR``, else this user's folder under the system temp dir
    (node-local)."""
    return get_settings().cache_dir


def private_folder(root: Path) -> Path:
    """``root``, made if missing (this user's alone); raise if another user owns it (or a
    link to it) or anyone else may write to it: what is unpacked in the cache is imported
    as code, so a folder another local user could fill (a fixed name in the shared temp
    folder, a group's folder) would run their code."""
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    link, info = root.lstat(), root.stat()
    others_write = info.st_mode & 0o002 or (
        info.st_mode & 0o020 and not group_of_this_user_alone(info.st_gid))
    if link.st_uid != os.getuid() or info.st_uid != os.getuid() or others_write:
        raise ArtifactFetchError(
            f"the artifact cache {root} is not this user's alone (owned by uid "
            f"{info.st_uid}, mode {info.st_mode & 0o777:o}): another user could put code "
            "in it; remove it, or set MODELPLANE_CACHE_DIR to a folder of your own",
            detail={"field": "MODELPLANE_CACHE_DIR", "path": str(root)})
    return root


def group_of_this_user_alone(gid: int) -> bool:
    """Whether group ``gid`` holds this user alone (a user-private group, as a umask of
    002 expects): its members, and the users whose own group it is."""
    import grp
    import pwd

    try:
        members = set(grp.getgrgid(gid).gr_mem)
        owners = {user.pw_name for user in pwd.getpwall() if user.pw_gid == gid}
        me = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return False
    return members | owners <= {me}


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

    folder = private_folder(cache_dir or default_cache_dir()) / "sha256" / digest[:2]
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = folder / digest
    if target.exists():
        if _sha256(target) == digest:
            return target
        target.unlink(missing_ok=True)
    # A replica killed mid-download left its part; each new one would leave another, and
    # the node's disk filled until loads failed there.
    remove_left_by_the_dead(folder, digest, ("part",))
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
            temp.unlink(missing_ok=True)  # this pid's, from a process that died
            # Never through a link planted at the name: a new file of this user's alone.
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
            with os.fdopen(os.open(temp, flags, 0o600), "wb") as handle:
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
