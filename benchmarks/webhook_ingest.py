"""Webhook ingest throughput: the app against a bare aiohttp handler, and the rule matcher with 10,000 rules.

Usage: python benchmarks/webhook_ingest.py [--database-url URL] [--requests N] [--concurrency 32]
(`--database-url` names a migrated database where a project `bench` may be created.)

Each server runs in its own process on 127.0.0.1; this process sends signed, real-shaped
deliveries with unique GUIDs and measures them. Targets (2 cores, SQLite): ping >= 0.6x the
bare handler; push with 16 runs >= 2,000 deliveries/s with p99 <= 50 ms, nothing lost;
10,000 rules matched in <= 1 ms per event.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402

SECRET = "benchmark secret"
HOST = "127.0.0.1"
CELLS = 16
MATRIX = {"axes": {"kind": ["smoke", "fingerprint", "statistical", "feature"], "mode": ["release", "debug"], "omnetpp": ["6.0", "6.1"]}}
TARGET_PUSH_RATE = 2000
TARGET_PUSH_P99_MS = 50
TARGET_PING_RATIO = 0.6
TARGET_MATCH_MS = 1.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def run_bare(port: int) -> None:
    """A handler that only reads the body and answers 200."""

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/api/github/webhook", handle)
    web.run_app(app, host=HOST, port=port, print=None, access_log=None)


def run_app(port: int, database_url: str) -> None:
    """The real app, without background tasks (nothing may talk to GitHub)."""
    from opp_ci_app.app import create_app
    from opp_ci_app.config import Settings

    settings = Settings(database_url=database_url, webhook_secret=SECRET, public_url=f"http://{HOST}:{port}")
    web.run_app(create_app(settings, background=False), host=HOST, port=port, print=None, access_log=None)


async def prepare(database_url: str) -> None:
    from opp_ci_app import catalog
    from opp_ci_app.db import create_engine, sessionmaker, upgrade

    engine = create_engine(database_url)
    await upgrade(engine)
    async with sessionmaker(engine).begin() as session:
        if not await catalog.find_project_by_repo(session, "bench-org", "bench"):
            await catalog.create_project(session, "bench", "bench-org", "bench")
            await catalog.create_matrix(session, "bench", "bench-16", MATRIX)
            await catalog.create_rule(session, "bench", "branch", "bench/*", "bench-16")
    await engine.dispose()


async def verify(database_url: str, push_guids: set[str]) -> tuple[int, int, int]:
    """(deliveries recorded, matrix runs with 16 runs, matrix runs with another count) among the pushes sent."""
    from sqlalchemy import func, select

    from opp_ci_app.db import create_engine
    from opp_ci_app.models import TestMatrixRun, TestRun, WebhookDelivery

    engine = create_engine(database_url)
    async with engine.connect() as conn:
        recorded = set((await conn.execute(select(WebhookDelivery.guid))).scalars())
        counts = (
            await conn.execute(
                select(TestMatrixRun.delivery_guid, func.count(TestRun.id))
                .join(TestRun, TestRun.matrix_run_id == TestMatrixRun.id)
                .group_by(TestMatrixRun.id, TestMatrixRun.delivery_guid)
            )
        ).all()
    await engine.dispose()
    good = sum(1 for guid, n in counts if guid in push_guids and n == CELLS)
    bad = sum(1 for guid, n in counts if guid in push_guids and n != CELLS)
    return len(recorded & push_guids), good, bad


def signed(event: str, data: dict) -> tuple[bytes, dict[str, str], str]:
    body = json.dumps(data).encode()
    guid = str(uuid.uuid4())
    headers = {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": guid,
        "X-Hub-Signature-256": "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest(),
        "Content-Type": "application/json",
    }
    return body, headers, guid


def ping_delivery(_i: int):
    return signed("ping", {"zen": "Design for failure.", "hook_id": 1, "hook": {"type": "Repository", "events": ["push"]}})


def push_delivery(i: int):
    sha = hashlib.sha1(f"commit {i} {uuid.uuid4()}".encode()).hexdigest()
    repo = {"name": "bench", "full_name": "bench-org/bench", "owner": {"name": "bench-org", "login": "bench-org"}}
    data = {
        # A branch of its own: superseding (a slower path) is not what this measures.
        "ref": f"refs/heads/bench/topic-{i}-{sha[:8]}",
        "before": "0" * 40,
        "after": sha,
        "created": True,
        "deleted": False,
        "forced": False,
        "repository": repo,
        "pusher": {"name": "bench", "email": "bench@example.test"},
        "head_commit": {"id": sha, "message": f"Change {i}", "timestamp": "2026-01-01T10:00:00Z"},
        "commits": [{"id": sha, "message": f"Change {i}"}],
    }
    return signed("push", data)


async def load(url: str, deliveries: list, concurrency: int) -> tuple[float, list[float], list[dict]]:
    """Send every delivery with `concurrency` in flight; (seconds, latencies, answers)."""
    latencies: list[float] = []
    answers: list[dict] = []
    queue = iter(deliveries)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for body, headers, _guid in queue:
                start = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as resp:
                    answer = await resp.json(content_type=None)
                    latencies.append(time.perf_counter() - start)
                    answers.append({"status": resp.status, **(answer if isinstance(answer, dict) else {})})

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - start, latencies, answers


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


async def wait_listening(port: int) -> None:
    for _ in range(200):
        try:
            _r, w = await asyncio.open_connection(HOST, port)
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise SystemExit(f"server on port {port} did not start")


async def measure(name: str, target, args, make, count: int, concurrency: int) -> dict:
    port = free_port()
    process = multiprocessing.Process(target=target, args=(port, *args), daemon=True)
    process.start()
    try:
        await wait_listening(port)
        url = f"http://{HOST}:{port}/api/github/webhook"
        await load(url, [make(i) for i in range(min(200, count))], concurrency)  # warm-up
        deliveries = [make(i) for i in range(count)]
        seconds, latencies, answers = await load(url, deliveries, concurrency)
    finally:
        process.terminate()
        process.join(10)
    return {
        "name": name,
        "rate": len(latencies) / seconds,
        "p50": percentile(latencies, 50) * 1000,
        "p99": percentile(latencies, 99) * 1000,
        "answers": answers,
        "guids": {guid for _b, _h, guid in deliveries},
    }


async def ingest_alone(database_url: str, count: int, concurrency: int) -> tuple[float, float, float]:
    """Pushes handed straight to the ingest (no HTTP, no signature): (deliveries/s, CPU µs each, batch size)."""
    from gidgethub import sansio

    from opp_ci_app.config import Settings
    from opp_ci_app.db import create_engine
    from opp_ci_app.ingest import Ingest

    engine = create_engine(database_url)
    ingest = Ingest(engine, Settings(database_url=database_url, webhook_secret=SECRET))
    events = []
    for i in range(count):
        body, headers, guid = push_delivery(i)
        events.append(sansio.Event(json.loads(body), event="push", delivery_id=guid))
    gate = asyncio.Semaphore(concurrency)

    async def one(event) -> None:
        async with gate:
            await ingest.submit(event)

    start, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(one(e) for e in events))
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    await ingest.close()
    await engine.dispose()
    return count / seconds, cpu / count * 1e6, count / max(ingest.batches, 1)


def matcher_benchmark(n_rules: int = 10_000) -> tuple[float, float, float]:
    """(build seconds, mean ms per match, worst ms) for a project with `n_rules` rules."""
    from opp_ci_app.matching import RuleMatcher, rule_matches

    shapes = ["feature-{i}/*", "release-{i}.x", "v{i}.*", "*-hotfix-{i}", "topic/{i}/?", "exact-{i}"]
    rules = [(i, shapes[i % len(shapes)].format(i=i)) for i in range(n_rules)]
    start = time.perf_counter()
    matcher = RuleMatcher(rules)
    build = time.perf_counter() - start
    names = ["master", "feature-6/a/b", "v8.1.0", "x-hotfix-3", "topic/4/a", "exact-5", "release-1.x", "nothing/here"]
    times = []
    for name in names:
        expected = [i for i, p in rules if rule_matches(p, name)]
        assert matcher.match(name) == expected, name
        start = time.perf_counter()
        for _ in range(200):
            matcher.match(name)
        times.append((time.perf_counter() - start) / 200 * 1000)
    return build, statistics.mean(times), max(times)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", help="default: a fresh SQLite file in a temporary folder")
    parser.add_argument("--requests", type=int, default=4000, help="deliveries per scenario [4000]")
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        database_url = args.database_url or f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
        if not database_url.startswith("sqlite") and not args.database_url:
            return 2
        await prepare(database_url)
        print(f"database: {database_url.split('@')[-1]}; {args.requests} deliveries per scenario, concurrency {args.concurrency}; cpus {os.cpu_count()}")
        bare = await measure("bare handler", run_bare, (), ping_delivery, args.requests, args.concurrency)
        ping = await measure("app: ping", run_app, (database_url,), ping_delivery, args.requests, args.concurrency)
        push = await measure("app: push, 16 runs", run_app, (database_url,), push_delivery, args.requests, args.concurrency)
        recorded, good, bad = await verify(database_url, push["guids"])
        alone_rate, alone_cpu, alone_batch = await ingest_alone(database_url, min(args.requests, 2000), args.concurrency)
    print(f"{'server':<22}{'deliveries/s':>14}{'p50 ms':>10}{'p99 ms':>10}{'vs bare':>10}")
    for row in (bare, ping, push):
        print(f"{row['name']:<22}{row['rate']:>14.0f}{row['p50']:>10.1f}{row['p99']:>10.1f}{row['rate'] / bare['rate']:>10.2f}")
    failed = [a for a in push["answers"] + ping["answers"] if a["status"] != 200]
    wrong = [a for a in push["answers"] if a.get("runs_queued") != CELLS]
    print(f"ingest alone (no HTTP), push with 16 runs: {alone_rate:.0f} deliveries/s, {alone_cpu:.0f} µs CPU each "
          f"(both threads), {alone_batch:.1f} deliveries per transaction")
    build, mean_ms, worst_ms = matcher_benchmark()
    print(f"matcher, 10,000 rules: built in {build:.2f} s; {mean_ms:.3f} ms per event on average, {worst_ms:.3f} ms worst")
    print(f"pushes: {len(push['answers'])} answered, {len(failed)} not 200, {len(wrong)} without {CELLS} runs; "
          f"in the database {recorded} recorded, {good} matrix runs with {CELLS} runs, {bad} with another count")
    checks = {
        f"ping >= {TARGET_PING_RATIO}x bare": ping["rate"] >= TARGET_PING_RATIO * bare["rate"],
        f"push >= {TARGET_PUSH_RATE}/s": push["rate"] >= TARGET_PUSH_RATE,
        f"push p99 <= {TARGET_PUSH_P99_MS} ms": push["p99"] <= TARGET_PUSH_P99_MS,
        "nothing lost": not failed and not wrong and recorded == len(push["guids"]) == good and bad == 0,
        f"match <= {TARGET_MATCH_MS} ms": worst_ms <= TARGET_MATCH_MS,
    }
    for name, ok in checks.items():
        print(f"{'met    ' if ok else 'MISSED '} {name}")
    return 0 if checks["nothing lost"] else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
