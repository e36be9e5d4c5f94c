"""A version's archive: a zip of code, weights and data, unpacked once per digest and
imported under a package name of its own.

The archive is only ever opened after its bytes hashed to the version's digest
(serving.artifact_cache), so what runs is what was registered. Each archive becomes the
package ``_modelplane_<digest>``: two versions with a module of the same name (every
team's ``model.py``) never share a module, and a module imports its siblings relatively
(``from .features import scale``).
"""

from __future__ import annotations

import fcntl
import importlib
import os
import shutil
import sys
import types
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any

from modelplane.durable import fsync_path, remove_left_by_the_dead

MAX_MEMBERS = 10_000
MAX_UNPACKED_BYTES = 8 * 2**30


class ArchiveError(ValueError):
    """The archive cannot be unpacked safely, or a reference in it does not resolve."""


def check_members(archive: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    """The archive's members, refused when one would land outside the folder (absolute
    paths, ``..``, links) or the whole is too large to unpack."""
    members = archive.infolist()
    if len(members) > MAX_MEMBERS:
        raise ArchiveError(f"the archive has {len(members)} members; at most {MAX_MEMBERS}")
    total = 0
    for member in members:
        path = PurePosixPath(member.filename)
        if path.is_absolute() or ".." in path.parts or "\\" in member.filename:
            raise ArchiveError(f"archive member {member.filename!r} would land outside its folder")
        if (member.external_attr >> 16) & 0o170000 == 0o120000:
            raise ArchiveError(f"archive member {member.filename!r} is a symbolic link")
        total += member.file_size
    if total > MAX_UNPACKED_BYTES:
        raise ArchiveError(f"the archive unpacks to {total} bytes; at most {MAX_UNPACKED_BYTES}")
    return members


def unpack(archive_path: Path, digest: str) -> Path:
    """The folder ``archive_path`` unpacks to, beside it, made once: unpacked under a
    temporary name, on disk (every file synced) and marked with its digest before it is
    renamed into place. A folder without the mark (cut short by a power loss, or unpacked
    before marks were written) is checked against the archive's sizes and CRCs, and marked
    where it matches, unpacked again where not; never imported unchecked. The processes of
    a node take turns (a lock file beside it), so none moves a folder another just made."""
    target = archive_path.parent / f"{digest}.d"
    if _complete(target, digest):
        return target
    with open(archive_path.parent / f".{digest}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _complete(target, digest):  # another process made it while this one waited
            return target
        # Unpackings and set-aside folders of processes killed in them (up to 8 GiB each).
        remove_left_by_the_dead(archive_path.parent, digest, ("unpacking",))
        remove_left_by_the_dead(archive_path.parent, f"{digest}.d", ("broken",))
        temp = archive_path.parent / f".{digest}.{os.getpid()}.unpacking"
        shutil.rmtree(temp, ignore_errors=True)
        try:
            with zipfile.ZipFile(archive_path) as archive:
                members = check_members(archive)
                if target.is_dir() and _matches(target, members):
                    _mark(target, digest)
                    return target
                archive.extractall(temp)
            _sync_tree(temp)
            _mark(temp, digest)
            if target.exists():
                _set_aside(target)
            os.replace(temp, target)
            fsync_path(archive_path.parent)
        except zipfile.BadZipFile as error:
            raise ArchiveError(f"the artifact is not a zip archive: {error}") from None
        finally:
            shutil.rmtree(temp, ignore_errors=True)
    return target


UNPACKED_MARKER = ".modelplane-unpacked"  # written last, holding the digest


def _complete(folder: Path, digest: str) -> bool:
    try:
        return (folder / UNPACKED_MARKER).read_text() == digest
    except OSError:
        return False


def _mark(folder: Path, digest: str) -> None:
    marker = folder / UNPACKED_MARKER
    marker.write_text(digest)
    fsync_path(marker)


def _matches(folder: Path, members: list[zipfile.ZipInfo]) -> bool:
    """Whether every file of the archive is in ``folder`` whole (size and CRC-32)."""
    for member in members:
        if member.is_dir():
            continue
        path = folder / member.filename
        try:
            if path.stat().st_size != member.file_size:
                return False
            crc = 0
            with open(path, "rb") as handle:
                while chunk := handle.read(1 << 20):
                    crc = zlib.crc32(chunk, crc)
        except OSError:
            return False
        if crc != member.CRC:
            return False
    return True


def _set_aside(folder: Path) -> None:
    """Move a broken folder out of the way, then remove it."""
    aside = folder.parent / f".{folder.name}.{os.getpid()}.broken"
    os.replace(folder, aside)
    shutil.rmtree(aside, ignore_errors=True)


def _sync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            fsync_path(Path(folder, name))
        fsync_path(Path(folder))



def package_name(digest: str) -> str:
    return f"_modelplane_{digest[:32]}"


def resolve(root: Path, digest: str, ref: str) -> Any:
    """The object ``module:attribute`` names inside the archive unpacked at ``root``."""
    module_name, _, attribute = ref.partition(":")
    package = package_name(digest)
    if package not in sys.modules:
        module = types.ModuleType(package)
        module.__path__ = [str(root)]
        module.__file__ = str(root / "__init__.py")
        sys.modules[package] = module
    try:
        module = importlib.import_module(f"{package}.{module_name}")
    except ModuleNotFoundError as error:
        if error.name and error.name.startswith(f"{package}.{module_name.split('.')[0]}"):
            raise ArchiveError(f"{ref}: the archive has no module {module_name!r} "
                               f"(its top level: {sorted(p.name for p in root.iterdir())[:20]})") from None
        raise
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ArchiveError(f"{ref}: module {module_name!r} has no attribute {attribute!r}") from None
