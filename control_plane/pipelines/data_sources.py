"""Read a pipeline's data by URI and fingerprint its content.

The URIs are the ones training job specs name: ``sklearn://breast_cancer`` (a bundled
scikit-learn dataset, as ``data.dataset`` records it in lineage), or a CSV or Parquet file
by local path or fsspec URI (``s3://…``, ``file://…``). A bundled dataset reads as its
feature columns plus a ``target`` column of class indices (or values), the rows and
numbers training sees.

:func:`dataset_digest` hashes the *content* (column names, kinds and values), not the
bytes of a file: the same table written again, or as Parquet instead of CSV, has the same
digest, so a data trigger re-runs a pipeline only when the data changed. A version's
``lineage.dataset_digest`` is training's hash of the file bytes, which
:func:`read_dataset` gives beside the table it read them as: the data stage records it,
and the training stage holds the version it trained to it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from control_plane.errors import InvalidInputError

if TYPE_CHECKING:
    import pandas as pd

BUNDLED_SCHEME = "sklearn://"
# The scikit-learn datasets training accepts (training.schemas.BUNDLED_DATASETS; the
# control plane does not import training).
BUNDLED_DATASETS = ("digits", "breast_cancer", "wine", "diabetes")
TARGET_COLUMN = "target"
DataFormat = Literal["auto", "csv", "parquet"]
_READ_PIECE = 1024 * 1024
# Bumped if the canonical encoding below changes: old digests then differ, by design.
_DIGEST_HEADER = b"modelplane-dataset-digest-v1\n"


# Where a pipeline's data may live. The control plane reads it in its own process, with
# its own credentials, for whoever holds a deployer token: fsspec's other protocols (ssh,
# ftp, hdfs, memory, reference, github, …) and its chained URLs (``a::b``) reach further
# than a dataset needs.
DATA_PROTOCOLS = ("file", "s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "http", "https")


def check_data_uri(uri: str) -> str:
    """``uri`` if the control plane may read data there; ValueError saying what may be."""
    if uri.startswith(BUNDLED_SCHEME):
        return uri
    if "::" in uri:
        raise ValueError(f"{uri!r} chains URLs (::); give the data's own URL")
    protocol = uri.split("://", 1)[0].lower() if "://" in uri else "file"
    if protocol not in DATA_PROTOCOLS:
        raise ValueError(f"{protocol}:// is not a protocol pipelines read data from; use a "
                         f"local path or one of {', '.join(p + '://' for p in DATA_PROTOCOLS)}, "
                         f"or {BUNDLED_SCHEME}NAME")
    return uri


def load_dataset(uri: str, *, format: DataFormat = "auto") -> pd.DataFrame:
    """The table at ``uri``: a bundled dataset (``sklearn://NAME``) or a CSV/Parquet file.

    Raises :class:`InvalidInputError` naming the URI when it cannot be read.
    """
    return read_dataset(uri, format=format)[0]


def read_dataset(uri: str, *, format: DataFormat = "auto") -> tuple[pd.DataFrame, str]:
    """The table at ``uri`` and, from the same read, the digest a training job reading it
    records as its lineage's ``dataset_digest``: the sha256 of a file's bytes, or of a
    bundled dataset's features (float64) and targets, as ``training.data`` hashes them.
    A version trained on other data than this table records another digest."""
    if uri.startswith(BUNDLED_SCHEME):
        return _bundled(uri.removeprefix(BUNDLED_SCHEME))
    try:  # checked again here: a spec stored before the check reads no further
        check_data_uri(uri)
    except ValueError as error:
        raise _error(str(error)) from None
    import io

    import pandas as pd

    from training.data import HashingReader

    kind = format if format != "auto" else _format_of(uri)
    try:
        with open_data(uri) as handle:
            # Read once: the table and its digest are of the same bytes, each piece held to
            # the size bound (an answer that never ends stops at it). A CSV is parsed as it
            # streams, as training reads it; Parquet is read by offsets, so from memory.
            hashing = HashingReader(handle)
            if kind != "parquet":
                return pd.read_csv(hashing), hashing.hexdigest()
            whole = io.BytesIO()
            while piece := hashing.read(_READ_PIECE):
                whole.write(piece)
            whole.seek(0)
            return pd.read_parquet(whole), hashing.hexdigest()
    except InvalidInputError:
        raise
    except Exception as error:  # pandas and pyarrow raise many types for a bad file
        raise _error(f"cannot read {uri} as {kind}: {_first_line(error)}") from None


def dataset_digest(data: pd.DataFrame | Mapping[str, Any] | str) -> str:
    """sha256 (hex) of a table's canonical content: column names in order, and each
    column's values, numbers as float64 (so 1 and 1.0 are one value), text as UTF-8, and
    every missing value (None, NaN, NaT) as one marker. ``data`` may be a URI, read with
    :func:`load_dataset`."""
    import pandas as pd

    if isinstance(data, str):
        data = load_dataset(data)
    frame = data if isinstance(data, pd.DataFrame) else pd.DataFrame(dict(data))
    hasher = hashlib.sha256(_DIGEST_HEADER)
    hasher.update(f"rows={len(frame)};columns={frame.shape[1]}\n".encode())
    for name in frame.columns:
        hasher.update(_framed(str(name).encode()))
        kind, payload = _canonical(frame[name])
        hasher.update(kind)
        hasher.update(payload)
    return hasher.hexdigest()


def _canonical(column: pd.Series) -> tuple[bytes, bytes]:
    import pandas as pd

    dtype = column.dtype
    numeric = (pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)
               and not isinstance(dtype, pd.CategoricalDtype))
    if numeric:
        values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        # One bit pattern for every missing value, and 0.0 for -0.0.
        values = np.where(np.isnan(values), np.nan, values + 0.0)
        return b"n", values.astype("<f8").tobytes()
    missing = column.isna().to_numpy()
    parts = [b"\x00" if absent else _framed(_text(value))
             for value, absent in zip(column.tolist(), missing, strict=True)]
    return b"t", b"".join(parts)


def _text(value: Any) -> bytes:
    if isinstance(value, bool | np.bool_):
        return b"true" if value else b"false"
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value)).encode()
    return str(value).encode()


def _framed(raw: bytes) -> bytes:
    # A length prefix, so ("ab", "c") and ("a", "bc") hash differently.
    return b"\x01" + len(raw).to_bytes(8, "little") + raw


def _bundled(name: str) -> tuple[pd.DataFrame, str]:
    import pandas as pd
    from sklearn import datasets

    if name not in BUNDLED_DATASETS:
        raise _error(f"unknown bundled dataset {name!r}; choose one of "
                     f"{', '.join(BUNDLED_SCHEME + n for n in BUNDLED_DATASETS)}, or give a "
                     "CSV/Parquet path or URI")
    loaded = getattr(datasets, f"load_{name}")()
    names = [str(n) for n in loaded.feature_names]
    features, target = np.asarray(loaded.data, dtype=np.float64), np.asarray(loaded.target)
    frame = pd.DataFrame(features, columns=names)
    frame[TARGET_COLUMN] = target
    hasher = hashlib.sha256(features.tobytes())  # as training.data hashes it
    hasher.update(target.tobytes())
    return frame, hasher.hexdigest()


def _format_of(uri: str) -> str:
    lowered = uri.lower().split("?", 1)[0]
    if lowered.endswith((".parquet", ".pq")):
        return "parquet"
    if lowered.endswith((".csv", ".csv.gz", ".txt")):
        return "csv"
    raise _error(f"cannot tell the format of {uri} from its name; name it .csv or .parquet, "
                 "or give the format")


def outside_data_roots(uri: str) -> str | None:
    """Why the control plane may not read the local file ``uri`` names (None: it may, or
    ``uri`` is not local): only files within ``MODELPLANE_DATA_ROOTS``, links followed.
    It reads them with its own rights for whoever holds a deployer token, and what it
    reports of them (columns, values) would show any CSV it can read."""
    path = local_data_path(uri)
    return None if path is None else _outside_roots(uri, os.path.realpath(path))


def _outside_roots(uri: str, real: str) -> str | None:
    from modelplane.settings import get_settings

    roots = get_settings().local_data_roots
    if any(Path(real).is_relative_to(root) for root in roots):
        return None
    return (f"{uri} is outside the folders pipelines read local data from "
            f"({', '.join(str(root) for root in roots)}): move it there, give a storage URL, "
            "or have the operator add its folder to MODELPLANE_DATA_ROOTS")


def local_data_path(uri: str) -> str | None:
    """The file a local data URI names (a path, or a ``file://`` URL); None for others."""
    if uri.startswith(BUNDLED_SCHEME):
        return None
    if uri.lower().startswith("file://"):
        return os.path.expanduser(uri[len("file://"):])
    return None if "://" in uri else os.path.expanduser(uri)


def open_data(uri: str) -> Any:
    """``uri`` opened for reading as pipelines read data: a local file only within
    ``MODELPLANE_DATA_ROOTS``, an http(s) host checked and no redirect followed, no
    further than ``MODELPLANE_DATA_MAX_MB``."""
    import fsspec

    options: dict[str, Any] = {}
    target, local = uri, local_data_path(uri)
    if local is not None:
        target = os.path.realpath(local)  # the file checked, whatever its links point to later
        if (outside := _outside_roots(uri, target)) is not None:
            raise _error(outside)
    if uri.lower().startswith(("http://", "https://")):
        check_http_host(uri)
        # A public host's redirect would lead past the check to wherever it points: none is
        # followed, and one answered to a look first is named.
        options["allow_redirects"] = False
        _refuse_redirect(uri)
    try:
        handle = fsspec.open(target, "rb", **options).open()
    except FileNotFoundError:
        raise _error(f"{uri} does not exist") from None
    except Exception as error:
        raise _error(f"cannot open {uri}: {_first_line(error)}") from None
    return _Bounded(handle, uri)


class _Bounded:
    """A data file read no further than ``MODELPLANE_DATA_MAX_MB``: it is read whole into
    the control plane's memory, and a file of tens of gigabytes (or an answer that never
    ends) had the control plane killed for memory. A size known up front is checked before
    anything is read."""

    def __init__(self, handle: Any, uri: str) -> None:
        from modelplane.settings import MIB, get_settings

        self._handle, self._uri = handle, uri
        self._limit = get_settings().data_max_mb * MIB
        size = getattr(handle, "size", None)
        if isinstance(size, int) and size > self._limit:
            handle.close()
            raise self._too_big(f"is {size:,} bytes")

    def _too_big(self, what: str) -> InvalidInputError:
        return _error(f"{self._uri} {what}, more than a pipeline reads "
                      f"({self._limit // (1024 * 1024)} MiB: MODELPLANE_DATA_MAX_MB)")

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        if self._handle.tell() > self._limit:
            raise self._too_big("goes on past its limit")
        return data  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:  # seek, tell, readable, … as the file has them
        return getattr(self._handle, name)

    def __iter__(self) -> Any:
        return iter(self._handle)

    def __enter__(self) -> _Bounded:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.close()


def check_http_host(uri: str, allowed: tuple[frozenset[str], tuple[Any, ...]] | None = None
                    ) -> None:
    """Refuse an http(s) URI whose host is, or resolves to, an address that is not public
    (loopback, private, link-local, shared, reserved), unless the operator allowed it
    (``MODELPLANE_DATA_PRIVATE_HOSTS``): the control plane must not be a way into its own
    network. A name is resolved here and again when read, so a name that changes its
    answer in between (DNS rebinding) is not caught; allow names only you control."""
    import ipaddress
    import socket
    from urllib.parse import urlsplit

    from modelplane.settings import get_settings

    names, blocks = allowed if allowed is not None else get_settings().private_data_hosts
    try:
        parts = urlsplit(uri)
        host, port = parts.hostname or "", parts.port
    except ValueError as error:
        raise _error(f"{uri} is not a URL: {error}") from None
    if not host:
        raise _error(f"{uri} names no host")
    if host.lower().rstrip(".") in names:
        return
    try:
        found = {info[4][0] for info in socket.getaddrinfo(host, port or 443,
                                                          proto=socket.IPPROTO_TCP)}
    except OSError as error:
        raise _error(f"cannot resolve the host of {uri}: {_first_line(error)}") from None
    for text in sorted(found):
        address = ipaddress.ip_address(text.split("%", 1)[0])
        if not address.is_global and not any(address in block for block in blocks):
            raise InvalidInputError(
                f"data: {uri} is on {address}, an address that is not public; pipelines read "
                "data over HTTP from public addresses only, unless the operator allows the "
                "host in MODELPLANE_DATA_PRIVATE_HOSTS", detail={"field": "data"})


def _refuse_redirect(uri: str) -> None:
    import httpx

    try:
        answer = httpx.head(uri, follow_redirects=False, timeout=30)
    except httpx.HTTPError:
        return  # the read says what is wrong
    if answer.is_redirect:
        raise _error(f"{uri} redirects to {answer.headers.get('location', '?')}; redirects are "
                     "not followed: give the data's own URL")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:300]


def _error(message: str) -> InvalidInputError:
    return InvalidInputError(f"data: {message}", detail={"field": "data"})
