"""Real payloads and helpers to send them signed, the way GitHub does."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
SECRET = "It's a Secret to Everybody"
WEBHOOK = "/api/github/webhook"


def payload(name: str) -> dict[str, Any]:
    """A copy of `tests/webhooks/<name>.json`."""
    return json.loads((HERE / f"{name}.json").read_text(encoding="utf-8"))


def payload_names() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.json"))


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def headers(event: str, body: bytes, guid: str | None = None, content_type: str = "application/json") -> dict[str, str]:
    return {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": guid or str(uuid.uuid4()),
        "X-Hub-Signature-256": sign(body),
        "Content-Type": content_type,
    }


async def deliver(client, event: str, data: Any, guid: str | None = None):
    """POST a signed JSON delivery; returns (status, json body)."""
    body = json.dumps(data).encode()
    resp = await client.post(WEBHOOK, data=body, headers=headers(event, body, guid))
    return resp.status, await resp.json()


def push_payload(ref: str, sha: str = "a" * 40, *, owner: str = "inet-framework", repo: str = "inet",
                 message: str = "Fix things", timestamp: str | None = "2026-01-01T10:00:00Z",
                 deleted: bool = False) -> dict[str, Any]:
    """A push as GitHub sends it, trimmed to the fields that matter."""
    return {
        "ref": ref,
        "before": "0" * 40,
        "after": "0" * 40 if deleted else sha,
        "created": False,
        "deleted": deleted,
        "forced": False,
        "repository": {"name": repo, "full_name": f"{owner}/{repo}", "owner": {"name": owner, "login": owner}},
        "head_commit": None if deleted else {"id": sha, "message": message, "timestamp": timestamp},
    }


def pr_payload(action: str, number: int = 7, head_ref: str = "topic/x", sha: str = "b" * 40, *,
               owner: str = "inet-framework", repo: str = "inet", updated_at: str = "2026-01-01T10:00:00Z",
               fork: bool = False) -> dict[str, Any]:
    """A pull_request event; `fork=True` gives the null `head.repo` of a deleted fork."""
    repository = {"name": repo, "full_name": f"{owner}/{repo}", "owner": {"login": owner}}
    return {
        "action": action,
        "number": number,
        "pull_request": {
            "number": number,
            "state": "closed" if action == "closed" else "open",
            "updated_at": updated_at,
            "head": {"ref": head_ref, "sha": sha, "repo": None if fork else repository},
            "base": {"ref": "master", "sha": "c" * 40, "repo": repository},
        },
        "repository": repository,
    }
