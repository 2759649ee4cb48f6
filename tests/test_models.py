"""Constraints that live in the database itself, on SQLite and PostgreSQL alike."""

import pytest
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError

from opp_ci_app import catalog
from opp_ci_app.models import AutoTestRule, Project, TestMatrix, WebhookDelivery


async def test_owner_and_repo_unique_regardless_of_case(db):
    async with db.begin() as session:
        session.add(Project(name="inet", github_owner="inet-framework", github_repo="inet"))
    with pytest.raises(IntegrityError):
        async with db.begin() as session:
            session.add(Project(name="inet2", github_owner="INET-Framework", github_repo="INET"))


async def test_project_name_unique(db):
    async with db.begin() as session:
        session.add(Project(name="inet", github_owner="a", github_repo="b"))
    with pytest.raises(IntegrityError):
        async with db.begin() as session:
            session.add(Project(name="inet", github_owner="c", github_repo="d"))


async def test_delivery_guid_unique(db):
    async with db.begin() as session:
        session.add(WebhookDelivery(guid="g-1", event="ping"))
    with pytest.raises(IntegrityError):
        async with db.begin() as session:
            session.add(WebhookDelivery(guid="g-1", event="push"))


async def test_matrix_used_by_a_rule_cannot_be_deleted(db):
    async with db.begin() as session:
        await catalog.create_project(session, "inet", "inet-framework", "inet")
        await catalog.create_matrix(session, "inet", "m", {"axes": {"kind": ["smoke"]}})
        await catalog.create_rule(session, "inet", "branch", "master", "m")
    with pytest.raises(catalog.Conflict, match="used by rule"):
        async with db.begin() as session:
            await catalog.delete_matrix(session, "m")
    # The database refuses it too, whoever asks.
    with pytest.raises(IntegrityError):
        async with db.begin() as session:
            await session.execute(delete(TestMatrix).where(TestMatrix.name == "m"))
    async with db.begin() as session:
        await session.execute(delete(AutoTestRule))
        await catalog.delete_matrix(session, "m")


async def test_rule_needs_an_existing_project(db):
    with pytest.raises(IntegrityError):
        async with db.begin() as session:
            session.add(AutoTestRule(project_id=999, rule_type="branch", pattern="x"))
