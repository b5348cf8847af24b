"""Errors with stable codes.

Every error a user can provoke carries a `code` that never changes between releases; the
transport layers map codes to HTTP / gRPC status in one table, so clients can branch on
the code rather than on message text.
"""

from __future__ import annotations

from typing import Any, ClassVar


class PacelineError(Exception):
    """Base class: `code` is stable, `message` is for humans, `details` for machines."""

    code: ClassVar[str] = "INTERNAL"

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = dict(details or {})

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}


class InvalidSpec(PacelineError):
    """The curriculum spec (layout, objectives, sizes, names) is malformed."""

    code = "INVALID_SPEC"


class UnknownStrategy(InvalidSpec):
    """A sampler or weighting name is not registered."""

    code = "UNKNOWN_STRATEGY"


class InvalidParams(InvalidSpec):
    """A strategy's parameters are unknown, of the wrong type or out of range."""

    code = "INVALID_PARAMS"


class InvalidReport(PacelineError):
    """A report has wrong shapes, non-finite values or inconsistent groups."""

    code = "INVALID_REPORT"


class IndexOutOfRange(InvalidReport):
    """A sample index is outside 0..N-1 of the curriculum's dataset layout."""

    code = "INDEX_OUT_OF_RANGE"


class InvalidRequest(PacelineError):
    """A request's arguments (batch size, step, run id) are out of range."""

    code = "INVALID_REQUEST"


class StrategyError(PacelineError):
    """A sampler or weighting (a plug-in, as a rule) raised, or returned what breaks its
    contract (an index outside the dataset, probabilities or weights that are not a
    distribution): nothing it returned is served or stored, and the message names it."""

    code = "STRATEGY_ERROR"


class StateCorrupt(PacelineError):
    """Serialised state could not be decoded into the expected structure."""

    code = "STATE_CORRUPT"


class NotFound(PacelineError):
    """A named resource does not exist."""

    code = "NOT_FOUND"


class CurriculumNotFound(NotFound):
    code = "CURRICULUM_NOT_FOUND"


class RunNotFound(NotFound):
    code = "RUN_NOT_FOUND"


class Conflict(PacelineError):
    """The request contradicts what is stored."""

    code = "CONFLICT"


class CurriculumExists(Conflict):
    """A curriculum of that name exists with a different spec."""

    code = "CURRICULUM_EXISTS"


class IdempotencyConflict(Conflict):
    """An idempotency key was reused for a different request."""

    code = "IDEMPOTENCY_CONFLICT"


class ReportConflict(Conflict):
    """(run, step) was reported before with different content: a step is folded once, so
    a resumed trainer that replays a step with other rewards is refused, not counted
    twice (the same content is answered with the original acknowledgement)."""

    code = "REPORT_CONFLICT"


class NotServed(Conflict):
    """A report for a (run, step) Paceline never served a batch for, or naming sample
    indices outside what that step served (unless the report opts in with
    `unserved: "accept"`)."""

    code = "NOT_SERVED"


class IndicesNotServed(NotServed):
    """The step was served, but the report names indices that were not in it (a dataset
    addressed by other indices than Paceline's, or rows matched to the wrong step)."""

    code = "INDICES_NOT_SERVED"


class SchemaOutdated(PacelineError):
    """The database schema is behind the code; run `paceline-server migrate`."""

    code = "SCHEMA_OUTDATED"


class Unavailable(PacelineError):
    """A dependency (database, lock) is temporarily unavailable; retry later."""

    code = "UNAVAILABLE"


class StorageRefused(Unavailable):
    """The database answered but refused a write (disk or quota full, a read-only file
    or transaction, an I/O error). Its own class, so readiness can remember it without
    reading messages, which may quote a user's names (api/health.py)."""


class RateLimited(PacelineError):
    """A token (or client address) sent more requests than its rate limit allows;
    `details.retry_after_s` says when the next one will be accepted."""

    code = "RATE_LIMITED"


class Unauthenticated(PacelineError):
    """No or an unknown bearer token where authentication is on."""

    code = "UNAUTHENTICATED"


class Forbidden(PacelineError):
    """The token's scope does not allow this operation."""

    code = "FORBIDDEN"


class MalformedBody(InvalidRequest):
    """The request body could not be decoded (bad JSON, msgpack or gzip)."""

    code = "MALFORMED_BODY"


class HostNotAllowed(InvalidRequest):
    """The request names a host (its Host header) the service does not answer to
    (`PACELINE_ALLOWED_HOSTS`): what a page whose own name was rebound to the service's
    address sends."""

    code = "HOST_NOT_ALLOWED"


class PayloadTooLarge(InvalidRequest):
    code = "PAYLOAD_TOO_LARGE"


class UnsupportedMediaType(InvalidRequest):
    code = "UNSUPPORTED_MEDIA_TYPE"


class HistoryOutOfRange(InvalidRequest):
    """A history was asked for from a sequence number beyond the curriculum's head
    (`since` > the last report)."""

    code = "HISTORY_OUT_OF_RANGE"


class InvalidDownsampling(InvalidRequest):
    """A history's `every` is not a positive integer."""

    code = "INVALID_DOWNSAMPLING"


class InvalidPageToken(InvalidRequest):
    """A listing's `page_token` is not one the same listing handed out as its
    `next_page_token`: garbage, cut or edited, or from another listing (the runs of
    another curriculum, the curricula)."""

    code = "INVALID_PAGE_TOKEN"


class StepAlreadyReported(Conflict):
    """A refill (dynamic sampling) for a (run, step) that was already reported: the step
    is over, so more prompts for it could never be reported."""

    code = "STEP_ALREADY_REPORTED"


class RefillOutOfOrder(Conflict):
    """A refill part that does not follow the step's served parts: part 0 (the step's
    batch) must be served first, and part p needs parts 0..p-1."""

    code = "REFILL_OUT_OF_ORDER"


class RefillTooLarge(InvalidRequest):
    """A refill asking for more prompts than the dataset has left unserved in the step."""

    code = "REFILL_TOO_LARGE"


class StateTooLarge(InvalidSpec):
    """The curriculum's estimated in-memory state is over the service's memory budget
    (`PACELINE_MAX_STATE_BYTES`); `details.estimate_bytes` says how much it would need."""

    code = "STATE_TOO_LARGE"
