"""The error tree. The branch carries the decision: reject (never retry) or retry later.

    CloudPacsError
      ConfigError       bad settings; the process refuses to start
      NotFound          -> 404
      InvalidRequest    -> 400
      NotAcceptable     -> 406
      PayloadTooLarge   -> 413
      UnsupportedMedia  -> 415
      Rejected          the input is refused for good (STOW: FailedSOPSequence; folder: failed/)
        InvalidDicom    not parseable, or the base DICOM attributes are missing or malformed
        Conflict        same SOP Instance UID, different bytes, and the policy keeps the first
        WrongStudy      STOW-RS to /studies/{study} of an instance of another study
        WrongProject    the instance's study already belongs to another project
        UidInUse        the SOP Instance UID is held by another project or another study
      Unauthenticated -> 401; no credential, or one that is invalid, expired or revoked
      Forbidden       -> 403; a valid credential without the role, or a refused address
      Unavailable       -> 503; the database is unreachable; ingest retries and keeps the source
        Overloaded      -> 503; more concurrent STOW-RS requests than max_concurrent_uploads
        RequestTimedOut -> 503; a handler passed request_timeout_seconds before answering

HTTP error bodies carry the message of 4xx errors and of Overloaded/RequestTimedOut only;
other 5xx messages (which may name hosts or library errors) go to the log.

The only error-to-status table is in cloudpacs.http.middleware.
"""

from __future__ import annotations


class CloudPacsError(Exception):
    """Base of every error cloudpacs raises on purpose."""


class ConfigError(CloudPacsError):
    pass


class NotFound(CloudPacsError):
    pass


class InvalidRequest(CloudPacsError):
    pass


class NotAcceptable(CloudPacsError):
    pass


class PayloadTooLarge(CloudPacsError):
    pass


class UnsupportedMedia(CloudPacsError):
    pass


class Rejected(CloudPacsError):
    """Permanent refusal of an input; `reason` is a short stable code for metrics."""

    reason = "rejected"

    def __init__(
        self,
        message: str,
        sop_uid: str | None = None,
        sop_class_uid: str | None = None,
        study_uid: str | None = None,
        series_uid: str | None = None,
    ) -> None:
        super().__init__(message)
        self.sop_uid = sop_uid
        self.sop_class_uid = sop_class_uid
        self.study_uid = study_uid  # known when the refusal came after parsing
        self.series_uid = series_uid

    def __reduce__(self) -> tuple[type[Rejected], tuple[str | None, ...]]:
        # crosses the process boundary from the parser workers with its UIDs intact
        uids = (self.sop_uid, self.sop_class_uid, self.study_uid, self.series_uid)
        return type(self), (str(self), *uids)


class InvalidDicom(Rejected):
    reason = "invalid-dicom"


class Conflict(Rejected):
    reason = "conflict"


class WrongStudy(Rejected):
    reason = "wrong-study"


class WrongProject(Rejected):
    reason = "wrong-project"


class UidInUse(Rejected):
    """Its message is generic on purpose: it never says where the UID is held, nor how the
    stored instance differs (another project's data is not revealed)."""

    reason = "uid-in-use"


class Unauthenticated(CloudPacsError):
    pass


class Forbidden(CloudPacsError):
    pass


class Unavailable(CloudPacsError):
    # whether the message is fit for a client (else it stays in the log)
    public = False


class Overloaded(Unavailable):
    public = True


class RequestTimedOut(Unavailable):
    public = True
