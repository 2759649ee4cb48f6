"""The gidgethub routers: which handlers each event reaches, and the planning pass that writes nothing."""

import random

import pytest
from gidgethub import sansio
from sqlalchemy import func, select

from opp_ci_app import catalog, ingest
from opp_ci_app.models import TestRun, WebhookDelivery
from routers import router
from tests.webhooks import deliver, payload, payload_names, pr_payload, push_payload


def event(name: str, data: dict) -> sansio.Event:
    return sansio.Event(data, event=name, delivery_id="d-1")


@pytest.mark.parametrize(
    ("name", "data", "handlers"),
    [
        ("ping", {"zen": "z"}, {"answer_ping"}),
        ("push", {"ref": "refs/heads/x"}, {"queue_matching_rules"}),
        ("pull_request", {"action": "opened"}, {"queue_matching_rules"}),
        ("pull_request", {"action": "synchronize"}, {"queue_matching_rules"}),
        ("pull_request", {"action": "reopened"}, {"queue_matching_rules"}),
        ("pull_request", {"action": "closed"}, {"cancel_closed_pr"}),
        ("pull_request", {"action": "labeled"}, set()),
        ("installation", {"action": "created"}, {"record_installation"}),
        ("installation_repositories", {"action": "added"}, {"record_installation_repositories"}),
        ("issues", {"action": "opened"}, set()),
    ],
)
def test_routes(name, data, handlers):
    assert {f.__name__ for f in router.fetch(event(name, data))} == handlers


@pytest.fixture
async def inet(db):
    async with db.begin() as s:
        await catalog.create_project(s, "inet", "inet-framework", "inet")
        await catalog.create_rule(s, "inet", "branch", "*")


async def test_planning_pass_decides_without_writing(db, settings, inet):
    async with db() as s:
        delivery = await ingest.handle(s, settings, ingest.RulesCache(), event("push", push_payload("refs/heads/master")),
                                       planning_only=True)
        assert delivery.to_queue is not None and delivery.to_queue.head.git_ref == "master"
        assert [(p.matrix_name, p.labels) for p in delivery.planned] == [("smoke", ["smoke"])]
        assert not delivery.needs_writes and delivery.matrix_run_ids == []
        assert await s.scalar(select(func.count()).select_from(TestRun)) == 0


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("push", push_payload("refs/heads/master", deleted=True)),
        ("pull_request", pr_payload("closed")),
        ("installation", payload("installation.created.1")),
    ],
)
async def test_planning_pass_marks_deliveries_that_must_write_alone(db, settings, inet, name, data):
    async with db() as s:
        delivery = await ingest.handle(s, settings, ingest.RulesCache(), event(name, data), planning_only=True)
    assert delivery.needs_writes and delivery.to_queue is None


async def test_handling_writes_and_records(db, settings, inet):
    async with db.begin() as s:
        delivery = await ingest.handle(s, settings, ingest.RulesCache(), event("push", push_payload("refs/heads/x")))
        await ingest.record(s, [delivery])
    assert delivery.runs_queued == 1 and len(delivery.matrix_run_ids) == 1
    async with db() as s:
        assert await s.scalar(select(WebhookDelivery.runs_queued)) == 1


JSON_VALUES = [None, True, 0, -1, 2**40, 1.5, "", "x", "refs/heads/", "refs/tags/v6.1", [], [1], {}, {"a": None}, "0" * 40]


def mutations(data, rng: random.Random, count: int):
    """Copies of `data` with one field (at any depth) replaced or removed."""
    paths = []

    def walk(value, path):
        if isinstance(value, dict):
            for key, child in value.items():
                paths.append(path + (key,))
                if len(path) < 3:
                    walk(child, path + (key,))

    walk(data, ())
    for _ in range(count):
        import copy

        mutated = copy.deepcopy(data)
        path = rng.choice(paths)
        target = mutated
        for key in path[:-1]:
            target = target[key]
        if rng.random() < 0.2:
            del target[path[-1]]
        else:
            target[path[-1]] = rng.choice(JSON_VALUES)
        yield path, mutated


async def test_mangled_real_payloads_never_get_a_5xx(client, db, inet):
    rng = random.Random(20261204)
    for name in payload_names():
        kind = name.split(".")[0]
        for path, data in mutations(payload(name), rng, 12):
            status, body = await deliver(client, kind, data)
            assert status in (200, 400), (name, path, body)
            assert ("error" in body) == (status == 400)
