"""The Monitor's counter names, spelled once: how they are built and how they are read.

The Monitor keeps, per (endpoint, version), one-second slots and all-time totals of named
counters (a ``Counter[str]``), so one addition merges a whole delta and one sum reads a
window back. A name is either a scalar (``q:rows``) or a family prefix and a member
(``code:503``, ``q:missing:income``). This module is the only place that writes or slices
them; the Monitor builds names with :meth:`Family.key` and the constants below, and reads
windows back with :meth:`Family.read` and the functions at the end.

======================  ===========================================================
``code:{status}``       requests answered, by HTTP status (every way of routing)
``pinned:{status}``     the same, of the requests pinned to a version (and
``sticky:{status}``     ``sticky:`` of those carrying a stickiness key)
``error:{code}``        error answers, by modelplane error code
``rej:{reason}``        requests refused before the model ran, by reason
``shadow:{field}``      the sums of a shadow's comparison (``ShadowStats`` fields)
``nf:{routing}``        answers holding a value that is not finite (NaN, inf), by way
                        of routing (``random``, ``pinned``, ``sticky``)
``lat:sum``, ``lat:n``  latency sum (seconds) and count, for the anomaly baselines
``q:{scalar}``          data quality of the inputs (:data:`QUALITY_SCALARS`, data age)
``q:missing:{f}``       missing values of input feature ``f`` (``q:oor:{f}``: out of range)
``qp:missing:{f}``      the same of prediction feature ``f`` (and ``qp:oor:{f}``)
``fb:{scalar}``         feedback joined with randomly routed requests' predictions
                        (labelled, correct, errors)
``fb:cm:{t}:{p}``       joined pairs of true class ``t`` predicted as ``p``
``{routing}|fb:…``      the same of pinned or sticky requests' predictions
======================  ===========================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from serving.monitoring.routing import ROUTINGS

Counts = Mapping[str, float]


@dataclass(frozen=True)
class Family:
    """Counters sharing a prefix, one per member (a status code, a reason, a feature)."""

    prefix: str

    def key(self, member: object) -> str:
        """The counter of ``member``."""
        return f"{self.prefix}{member}"

    def read(self, counts: Counts) -> dict[str, float]:
        """The family's counters in ``counts``, by member, in the order ``counts`` has them."""
        start = len(self.prefix)
        return {key[start:]: value for key, value in counts.items() if key.startswith(self.prefix)}

    def total(self, counts: Counts) -> float:
        """The family's counters in ``counts``, summed."""
        return sum(self.read(counts).values())


CODE = Family("code:")
ERROR = Family("error:")
REJECTED = Family("rej:")
SHADOW = Family("shadow:")
NOT_FINITE = Family("nf:")
ABANDONED = Family("gone:")
INPUT_MISSING = Family("q:missing:")
INPUT_OUT_OF_RANGE = Family("q:oor:")
PREDICTION_MISSING = Family("qp:missing:")
PREDICTION_OUT_OF_RANGE = Family("qp:oor:")
CONFUSION = Family("fb:cm:")

LATENCY_SUM = "lat:sum"
LATENCY_COUNT = "lat:n"
ROWS = "q:rows"
MISSING_VALUES = "q:missing_values"
ROWS_WITH_MISSING = "q:rows_with_missing"
ROWS_OUT_OF_SUPPORT = "q:rows_out_of_support"
UNUSUAL_CONFIDENCE = "q:unusual_confidence"
UNMONITORED_ROWS = "q:unmonitored_rows"
UNOBSERVED_REQUESTS = "q:unobserved_requests"
DATA_AGE_COUNT = "q:age_n"
DATA_AGE_SUM = "q:age_sum"
LABELLED = "fb:n"
CORRECT = "fb:correct"
ABS_ERROR_SUM = "fb:abs"
SQUARED_ERROR_SUM = "fb:sq"
INVALID_LABELS = "fb:invalid"
FEEDBACK_DROPPED_AT_REPLICA = "fb:dropped_at_replica"
FEEDBACK_UNJOINABLE = "fb:unjoinable"  # predictions of more rows than labels may name
FEEDBACK = "fb:"

# The scalars of a replica's monitoring delta (``VersionObservations.to_delta``) and the
# counter each is added to.
QUALITY_SCALARS = {
    "rows": ROWS,
    "missing_values": MISSING_VALUES,
    "rows_with_missing": ROWS_WITH_MISSING,
    "rows_out_of_support": ROWS_OUT_OF_SUPPORT,
    "unusual_confidence": UNUSUAL_CONFIDENCE,
    "unmonitored_rows": UNMONITORED_ROWS,
}


def routed(kind: str) -> Family:
    """The answered requests, by status, that reached their version as ``kind`` says
    (``pinned`` or ``sticky``: see ``serving.monitoring.routing``)."""
    return Family(f"{kind}:")


def codes(counts: Counts, family: Family = CODE) -> dict[int, int]:
    """Requests by HTTP status in ``counts`` (of ``family``: every request by default)."""
    return {int(status): int(n) for status, n in family.read(counts).items()}


def confusion_key(truth: int, guess: int) -> str:
    """The counter of the joined pairs of true class ``truth`` predicted as ``guess``."""
    return CONFUSION.key(f"{truth}:{guess}")


def confusion(counts: Counts) -> dict[tuple[int, int], float]:
    """``{(true class, predicted class): pairs}`` in ``counts``."""
    out = {}
    for pair, n in CONFUSION.read(counts).items():
        truth, guess = pair.split(":")
        out[(int(truth), int(guess))] = n
    return out


def routed_feedback(kind: str, counts: Counts) -> dict[str, float]:
    """``counts`` (a joined pair's) under the names of the feedback joined with requests
    routed as ``kind`` says: a pinned or sticky request's label must not count as the
    analysis sample's, so its counters are kept apart."""
    return {f"{kind}|{key}": value for key, value in counts.items()}


def labelled(counts: Counts) -> float:
    """Labels joined in ``counts`` with the predictions of every way of routing (a few
    lookups: no pass over every counter)."""
    return counts.get(LABELLED, 0) + sum(counts.get(f"{kind}|{LABELLED}", 0)
                                         for kind in ROUTINGS)


def feedback(counts: Counts, routings: tuple[str, ...] | None) -> dict[str, float]:
    """The feedback counters in ``counts`` of the requests routed as ``routings`` say
    (the randomly routed ones always; None: every way of routing), summed under the
    plain ``fb:`` names that :func:`serving.monitoring.sections.accuracy_section` reads."""
    out: dict[str, float] = {}
    for key, value in counts.items():
        kind, bar, name = key.partition("|")
        if not bar or kind not in ROUTINGS:  # a feature's name may hold a bar too
            kind, name = "", key
        if not name.startswith(FEEDBACK) or (kind and routings is not None and kind not in routings):
            continue
        out[name] = out.get(name, 0) + value
    return out
