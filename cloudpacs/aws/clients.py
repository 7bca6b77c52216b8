"""boto3 clients, built once per process from the standard AWS credential chain.

Region and endpoint come from Settings (so the same code runs against AWS, LocalStack or a
moto server); credentials never do: environment, shared files, instance roles.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config


@dataclass(frozen=True)
class AwsClients:
    sqs: Any
    s3: Any


def make_clients(region: str | None, endpoint_url: str | None, max_connections: int) -> AwsClients:
    session = boto3.session.Session(region_name=region)
    config = Config(
        max_pool_connections=max_connections,
        retries={"mode": "standard", "max_attempts": 3},
        connect_timeout=10,
        read_timeout=60,
    )
    return AwsClients(
        sqs=session.client("sqs", endpoint_url=endpoint_url, config=config),
        s3=session.client("s3", endpoint_url=endpoint_url, config=config),
    )
