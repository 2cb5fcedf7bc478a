"""One exception hierarchy for everything a user of cf2run can see.

Every error says what is wrong, where (function, manifest field, file, step) and,
where we know it, what to do. Whether an error is worth retrying is a property of
the error (`transient`), which the tasks' retry condition reads.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Self

if TYPE_CHECKING:
    from cf2run.results import ParityResult


class Cf2RunError(Exception):
    """Base class. `hint` tells the user what to do about it."""

    transient: bool = False

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message} ({hint})" if hint else message)


class SpecError(Cf2RunError):
    """A manifest, a spec field or a flag is invalid. Raised before any cloud call."""


class SecretsUnavailable(Cf2RunError):
    """A secret the manifest names does not exist or is not enabled (found before deploying)."""


class SourceError(Cf2RunError):
    """The function's source tree cannot be packaged (missing, escaping symlink, ...)."""


class BuildFailed(Cf2RunError):
    """Cloud Build ran and the build did not succeed. Not retried: the same input fails again."""


class BuildInfrastructureFailed(Cf2RunError):
    """Cloud Build failed the build for a cause of its own (INTERNAL_ERROR, EXPIRED, a logging
    failure, a first timeout), not the source's: retried (cf2run/gcp/build_outcome.py)."""

    transient = True


class ImageVerificationError(Cf2RunError):
    """The built image is not what the build said it is (digest, platform, web process)."""


class DeployFailed(Cf2RunError):
    """Cloud Run did not bring the revision to Ready."""


class CandidateRejected(Cf2RunError):
    """A check before promotion refused the new revision: it is discarded, never promoted."""

    def with_outcome(self, outcome: str) -> Self:
        """The same error, its message followed by `outcome` (what became of the candidate)."""
        again = copy.copy(self)
        again.message = f"{self.message}{outcome}"
        again.args = (f"{again.message} ({self.hint})" if self.hint else again.message,)
        return again


class SmokeTestFailed(CandidateRejected):
    """The deployed service did not answer the smoke request as expected."""


class SmokeRefused(SmokeTestFailed):
    """Google's front end, not the function, answered the smoke request with its 404 page (what
    a service whose ingress keeps the caller out answers). `attempts`: requests made."""

    def __init__(self, message: str, *, hint: str | None = None, attempts: int = 1) -> None:
        super().__init__(message, hint=hint)
        self.attempts = attempts


class ParityDiffers(CandidateRejected):
    """The new revision does not answer like the old function (parity.on_difference: fail).
    `result`: the comparison (optional only so that copy and pickle, which call the class with
    the message alone, can make one)."""

    def __init__(self, message: str, *, result: ParityResult | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.result = result


class TransientError(Cf2RunError):
    """A failure that is expected to go away on retry (network, 429, 5xx, UNAVAILABLE)."""

    transient = True


class RegistryError(Cf2RunError):
    """An OCI distribution API call failed. Transient for 429, 5xx and connection failures."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 transient: bool | None = None, hint: str | None = None,
                 registry_message: str | None = None) -> None:
        self.status = status
        self.code = code
        self.registry_message = registry_message  #: the registry's own words (its error body's message)
        self.transient = transient if transient is not None else (
            status is not None and (status == 429 or status >= 500))
        super().__init__(message, hint=hint)


class EndpointUnreachable(TransientError):
    """Nothing answers at an endpoint (connection refused, a host name that does not resolve, no
    route to it): said at once, naming the service and its address (cf2run/gcp/reachability.py), not
    retried inside the call; the step's own retries (tasks/policy.py) are its one retry budget."""


class LocalCloudNotRunning(Cf2RunError):
    """No local cloud runs in the state directory a local target names (stopped, or killed)."""


class LocalCloudStarting(LocalCloudNotRunning):
    """The local cloud in the state directory is still starting: not every service listens yet."""
