"""Who may call each data-plane route under ``/v2``: declared once, here.

The data plane has two applications: ``inference-server`` (``/v2`` itself: server
metadata and health) and one per endpoint (``/v2/models/{endpoint}``: metadata,
readiness, inference, feedback, each optionally pinned to ``/versions/{version}``).
Everything is open to anyone except feedback: labels steer rollouts (the accuracy gate),
so only label sources may send them (see :mod:`serving.feedback_auth`).

tests/unit/serving/test_data_plane_routes.py enumerates the routes the applications
answer (from the endpoint dispatcher's own path pattern and the server's paths) and fails
for one not declared here; tests/integration/test_authorization_matrix.py calls each on
a running endpoint anonymously, as each role and with a revoked token. To declare a new
route, add ``"METHOD /path": RULE`` to the table of its application.
"""

from __future__ import annotations

# Anyone, with or without a token.
ANYONE = "anyone"
# A token of role labeler or higher (checked with the control plane); anyone while the
# operator sets MODELPLANE_FEEDBACK_ALLOWS_ANONYMOUS=true.
LABEL_SOURCE = "label source"

# Below the endpoint application's prefix, /v2/models/{endpoint}.
ENDPOINT_ROUTES: dict[str, str] = {
    "GET ": ANYONE,  # the endpoint's metadata
    "GET /ready": ANYONE,
    "POST /infer": ANYONE,
    "GET /versions/{version}": ANYONE,
    "GET /versions/{version}/ready": ANYONE,
    "POST /versions/{version}/infer": ANYONE,
    "POST /feedback": LABEL_SOURCE,
    "POST /versions/{version}/feedback": LABEL_SOURCE,  # the version is not used: labels join on request ids
}

# The inference-server application at /v2; it answers these paths whatever the method
# ("ANY") and any other path with 404.
SERVER_ROUTES: dict[str, str] = {
    "ANY ": ANYONE,  # server metadata
    "ANY /health/live": ANYONE,
    "ANY /health/ready": ANYONE,
}
