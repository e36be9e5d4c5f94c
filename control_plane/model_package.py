"""A model folder packed into the archive a version with code is registered as, and a
model file's kind told from its contents.

The archive is reproducible: members in name order, one fixed timestamp and mode, no
caches, so the same folder always packs to the same bytes and the same digest (the
registry stores an artifact once, whatever registers it).
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from control_plane.errors import InvalidInputError

_SKIPPED_DIRS = {"__pycache__", ".git", ".hg", ".svn", ".ipynb_checkpoints", ".mypy_cache",
                 ".pytest_cache", ".ruff_cache", ".venv"}
_SKIPPED_SUFFIXES = {".pyc", ".pyo"}
_EPOCH = (1980, 1, 1, 0, 0, 0)
MAX_PACKED_BYTES = 4 * 2**30


def pack_folder(folder: Path) -> bytes:
    """The folder as a reproducible zip archive (caches and VCS folders left out)."""
    if not folder.is_dir():
        raise InvalidInputError(f"{folder} is not a folder", detail={"field": "model"})
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()
                   and not (set(p.relative_to(folder).parts[:-1]) & _SKIPPED_DIRS)
                   and p.suffix not in _SKIPPED_SUFFIXES)
    if not files:
        raise InvalidInputError(f"{folder} holds no files to pack", detail={"field": "model"})
    total = sum(p.stat().st_size for p in files)
    if total > MAX_PACKED_BYTES:
        raise InvalidInputError(f"{folder} holds {total} bytes; at most {MAX_PACKED_BYTES}",
                                detail={"field": "model"})
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in files:
            info = zipfile.ZipInfo(path.relative_to(folder).as_posix(), date_time=_EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes())
    return buffer.getvalue()


def kind_of(path: Path) -> str | None:
    """``onnx``, ``torchscript``, ``torch_export``, or ``archive`` (a folder or zip: python, or onnx with
    steps, as the manifest's code says); None when the contents do not tell."""
    if path.is_dir():
        return "archive"
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head != b"PK\x03\x04":
        return "onnx" if path.suffix == ".onnx" or head[:1] == b"\x08" else None
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    # torch.jit.save writes <name>/data.pkl beside <name>/code/ (TorchScript's own source);
    # torch.export.save an archive_format file beside models/ and data/.
    if any(n.endswith("/data.pkl") for n in names) and any("/code/" in n for n in names):
        return "torchscript"
    if any(n.endswith("/archive_format") for n in names) and any("/models/" in n for n in names):
        return "torch_export"
    return "archive"
