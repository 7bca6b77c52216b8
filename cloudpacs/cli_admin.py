"""`cloudpacs tokens` and `cloudpacs audit`: the administrator's commands."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from cloudpacs.auth.tokens import TokenService
from cloudpacs.errors import InvalidRequest
from cloudpacs.storage.audit import AuditStore

AUDIT_COLUMNS = (
    "at",
    "user",
    "credential",
    "action",
    "outcome",
    "status",
    "project",
    "study",
    "series",
    "instance",
    "client",
    "method",
    "path",
    "detail",
)


def _text(value: Any) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    return "" if value is None else str(value)


async def manage_tokens(args: argparse.Namespace, tokens: TokenService) -> int:
    if args.action == "create":
        grants = {}
        for text in args.grant:
            project, sep, role = text.partition("=")
            if not sep:
                raise InvalidRequest(f"--grant takes PROJECT=ROLE, not {text!r}")
            grants[project.strip()] = role.strip()
        new = await tokens.create(
            args.subject or "", grants, args.days, args.default_project, args.description
        )
        print(new.token)
        print(
            f"token {new.record['_id']} for {new.record['subject']}, expires "
            f"{_text(new.record['expires_at'])}; shown once, store it now",
            file=sys.stderr,
        )
    elif args.action == "list":
        for record in await tokens.list():
            state = "revoked" if record.get("revoked_at") else "active"
            if state == "active" and record["expires_at"] <= datetime.now(UTC):
                state = "expired"
            granted = ",".join(f"{p}={r}" for p, r in record["grants"].items())
            print(
                f"{record['_id']}\t{record['subject']}\t{granted}\t{state}\t"
                f"expires {_text(record['expires_at'])}\t{record.get('description', '')}"
            )
    else:
        if not args.token_id:
            raise InvalidRequest("tokens revoke needs the token id (see tokens list)")
        await tokens.revoke(args.token_id)
        print(f"token {args.token_id} revoked")
    return 0


def parse_time(text: str | None, what: str) -> datetime | None:
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(f"{what}: {text!r} is not an ISO date or time") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@contextmanager
def _output(path: Path | None) -> Iterator[IO[str]]:
    if path is None:
        yield sys.stdout
        return
    with path.open("w", newline="") as fp:
        yield fp


async def export_audit(args: argparse.Namespace, store: AuditStore) -> int:
    records = store.query(
        user=args.user,
        study=args.study,
        action=args.audit_action,
        since=parse_time(args.since, "--since"),
        until=parse_time(args.until, "--until"),
    )
    count = 0
    with _output(args.output) as fp:
        writer = csv.writer(fp) if args.format == "csv" else None
        if writer:
            writer.writerow(AUDIT_COLUMNS)
        async for record in records:
            if writer:
                writer.writerow([_text(record.get(c)) for c in AUDIT_COLUMNS])
            else:
                fp.write(json.dumps({k: _text(v) for k, v in record.items()}) + "\n")
            count += 1
    print(f"{count} audit records", file=sys.stderr)
    return 0
