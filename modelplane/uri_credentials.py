"""Credentials written into a data URI, which every reader of a spec or a run would see.

Pipeline specs and runs (where a job's dataset URI is kept as a tag) are readable by any
reader token, and by anyone where the API allows anonymous reads; a password in the URL
or a presigned query string travels with them. Storage credentials belong in the
environment of the process that reads (AWS_*, GOOGLE_APPLICATION_CREDENTIALS, AZURE_*),
never in the URI.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

# Query parameters that carry a credential: S3 and GCS presigned URLs, Azure SAS tokens,
# and the usual bearer-in-URL names.
CREDENTIAL_PARAMETERS = frozenset({
    "x-amz-signature", "x-amz-credential", "x-amz-security-token", "awsaccesskeyid",
    "signature", "x-goog-signature", "x-goog-credential", "googleaccessid", "sig",
    "token", "access_token", "api_key", "apikey", "key", "password", "secret",
})

HOW = ("give the storage credentials to the process that reads the data, in its "
       "environment (AWS_ACCESS_KEY_ID…, GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_…), "
       "not in the URI, which every reader of the spec sees")


def credentials_in(uri: str) -> str | None:
    """What in ``uri`` is a credential (``"user:password@"``, ``"query parameter sig"``),
    or None."""
    if "://" not in uri:
        return None
    try:
        parts = urlsplit(uri)
    except ValueError:
        return None
    if parts.password is not None:
        return ("a user and password before the host" if parts.scheme in ("http", "https")
                else "a key and secret before the bucket")
    # Before an Azure account's host is the container (abfss://container@account…): only
    # over HTTP does a name alone before the host log in.
    if parts.username is not None and parts.scheme in ("http", "https"):
        return "a user before the host"
    for name, _ in parse_qsl(parts.query, keep_blank_values=True):
        if name.lower() in CREDENTIAL_PARAMETERS:
            return f"the query parameter {name!r}"
    return None


def credential_problem(field: str, uri: str | None) -> str | None:
    """Why ``uri``, given as ``field``, is refused (a credential in it), or None."""
    found = credentials_in(uri) if uri else None
    return None if found is None else f"{field} holds a credential ({found}); {HOW}"
