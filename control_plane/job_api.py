"""The job API of the Ray cluster the control plane runs on."""

from __future__ import annotations

from typing import Any


def cluster_job_client() -> Any:
    """A :class:`training.submission.JobClient` for this cluster's job API."""
    from training.submission import JobClient

    return JobClient(cluster_dashboard())


def cluster_dashboard() -> str | None:
    """The job API of the cluster this process belongs to, as the cluster itself records
    it (the control plane runs on it, so no setting is needed); None: ask the usual places."""
    try:
        import ray
        from ray._private import ray_constants
        from ray.experimental.internal_kv import _internal_kv_get

        if not ray.is_initialized():
            return None
        address = _internal_kv_get(ray_constants.DASHBOARD_ADDRESS,
                                   namespace=ray_constants.KV_NAMESPACE_DASHBOARD)
    except Exception:  # no Ray here, or an older one: the configured address is used
        return None
    if not address:
        return None
    text = address.decode() if isinstance(address, bytes) else str(address)
    return text if text.startswith(("http://", "https://")) else f"http://{text}"
