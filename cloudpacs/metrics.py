"""Every Prometheus metric, named once. Labels take bounded values only."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """One registry per process (or per test app), passed down like any dependency."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.ingests = Counter(
            "cloudpacs_ingests",
            "Instances ingested, by source and outcome (stored, duplicate, rejected, failed)",
            ["source", "outcome"],
            registry=r,
        )
        self.rejections = Counter(
            "cloudpacs_rejections",
            "Rejected inputs by reason code",
            ["source", "reason"],
            registry=r,
        )
        self.stored_bytes = Counter(
            "cloudpacs_stored_bytes", "Bytes of DICOM files stored", registry=r
        )
        self.ingest_seconds = Histogram(
            "cloudpacs_ingest_seconds",
            "Time to ingest one instance",
            ["source"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.ingests_in_flight = Gauge(
            "cloudpacs_ingests_in_flight", "Ingests under way", ["source"], registry=r
        )
        self.http_seconds = Histogram(
            "cloudpacs_http_request_seconds",
            "HTTP request latency by route template, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.http_in_flight = Gauge(
            "cloudpacs_http_requests_in_flight", "HTTP requests under way", registry=r
        )
        self.sqs_messages = Counter(
            "cloudpacs_sqs_messages",
            "SQS messages by what happened to them (received, deleted, retried, released)",
            ["event"],
            registry=r,
        )
        self.sqs_in_flight = Gauge(
            "cloudpacs_sqs_messages_in_flight", "SQS messages being processed", registry=r
        )
        self.sqs_queue_messages = Gauge(
            "cloudpacs_sqs_queue_messages",
            "Messages waiting in the queue (ApproximateNumberOfMessages), i.e. queue lag",
            ["queue"],
            registry=r,
        )
        self.sqs_message_age_seconds = Histogram(
            "cloudpacs_sqs_message_age_seconds",
            "Time a message waited in the queue before this receive",
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
            registry=r,
        )
        self.event_to_stored_seconds = Histogram(
            "cloudpacs_event_to_stored_seconds",
            "From the S3 event time to the instance being stored",
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900),
            registry=r,
        )
        self.place_cache_lookups = Counter(
            "cloudpacs_place_cache_lookups",
            "Instances looked up in the place cache for WADO-RS retrieval, by result (hit, "
            "miss, expired; stale: a hit whose file was gone)",
            ["result"],
            registry=r,
        )
        self.audit_records = Counter(
            "cloudpacs_audit_records", "Audit records written to the audit trail", registry=r
        )
        self.audit_dropped = Counter(
            "cloudpacs_audit_dropped",
            "Audit records dropped because the buffer was full (database unreachable)",
            registry=r,
        )
        self.audit_pending = Gauge(
            "cloudpacs_audit_pending", "Audit records waiting to be written", registry=r
        )
        self.auth_denials = Counter(
            "cloudpacs_auth_denials",
            "Requests refused by authentication or authorisation, by reason",
            ["reason"],
            registry=r,
        )
