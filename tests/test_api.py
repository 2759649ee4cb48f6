"""REST API for projects, matrices and rules: shapes, auth and every error path."""

import pytest

from opp_ci_app.models import Role
from tests.test_workers import make_project, queue_matrix_run


async def create_inet(client, headers):
    resp = await client.post("/api/projects", json={"name": "inet", "github": "inet-framework/inet"}, headers=headers)
    assert resp.status == 201, await resp.text()
    resp = await client.post(
        "/api/matrices",
        json={
            "project_name": "inet",
            "name": "inet-full",
            "config": {
                "axes": {"kind": ["smoke", "fingerprint"], "mode": ["release", "debug"]},
                "exclude": [{"kind": "smoke", "mode": "debug"}],
            },
        },
        headers=headers,
    )
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def test_healthz(client):
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert await resp.json() == {"ok": True}


async def test_new_user_walkthrough(client, admin_headers, readonly_headers):
    matrix = await create_inet(client, admin_headers)
    assert matrix["cells"] == ["smoke/release", "fingerprint/release", "fingerprint/debug"]
    resp = await client.post(
        "/api/github/rules",
        json={"project_name": "inet", "rule_type": "branch", "pattern": "master", "matrix_name": "inet-full"},
        headers=admin_headers,
    )
    assert resp.status == 201
    branch_rule = await resp.json()
    resp = await client.post(
        "/api/github/rules", json={"project_name": "inet", "rule_type": "pr", "pattern": "*"}, headers=admin_headers
    )
    assert resp.status == 201

    resp = await client.get("/api/github/rules", headers=readonly_headers)
    assert resp.status == 200
    rules = await resp.json()
    assert rules == [
        {
            "id": branch_rule["id"],
            "project_id": matrix["project_id"],
            "project_name": "inet",
            "rule_type": "branch",
            "pattern": "master",
            "matrix_id": matrix["id"],
            "matrix_name": "inet-full",
            "enabled": True,
        },
        {
            "id": rules[1]["id"],
            "project_id": matrix["project_id"],
            "project_name": "inet",
            "rule_type": "pr",
            "pattern": "*",
            "matrix_id": None,
            "matrix_name": None,
            "enabled": True,
        },
    ]
    resp = await client.get(f"/api/github/rules/{branch_rule['id']}", headers=readonly_headers)
    assert (await resp.json())["pattern"] == "master"


async def test_delete_rule(client, admin_headers):
    await create_inet(client, admin_headers)
    resp = await client.post(
        "/api/github/rules", json={"project_name": "inet", "rule_type": "tag", "pattern": "v*"}, headers=admin_headers
    )
    rule_id = (await resp.json())["id"]
    resp = await client.delete(f"/api/github/rules/{rule_id}", headers=admin_headers)
    assert resp.status == 204
    resp = await client.get(f"/api/github/rules/{rule_id}", headers=admin_headers)
    assert resp.status == 404
    resp = await client.delete(f"/api/github/rules/{rule_id}", headers=admin_headers)
    assert resp.status == 404
    assert "error" in await resp.json()


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/api/github/rules"),
        ("POST", "/api/github/rules"),
        ("GET", "/api/projects"),
        ("POST", "/api/projects"),
        ("GET", "/api/matrices"),
        ("POST", "/api/matrices"),
        ("DELETE", "/api/github/rules/1"),
        ("GET", "/api/runs"),
    ],
)
async def test_401_without_token(client, method, path):
    resp = await client.request(method, path, json={})
    assert resp.status == 401
    assert "token" in (await resp.json())["error"]
    resp = await client.request(method, path, json={}, headers={"Authorization": "Bearer oppci_not-a-real-token"})
    assert resp.status == 401


@pytest.mark.parametrize("role", [Role.READONLY, Role.WORKER])
async def test_403_when_role_too_low(client, make_token, role):
    headers = {"Authorization": f"Bearer {await make_token(role)}"}
    resp = await client.post("/api/github/rules", json={}, headers=headers)
    assert resp.status == 403
    assert "admin" in (await resp.json())["error"]
    resp = await client.get("/api/github/rules", headers=headers)
    assert resp.status == 200


async def test_revoked_token_is_refused(client, db, make_token):
    from opp_ci_app import tokens

    secret = await make_token(Role.ADMIN)
    async with db.begin() as session:
        row = await tokens.lookup(session, secret)
        await tokens.revoke(session, row.id)
    resp = await client.get("/api/github/rules", headers={"Authorization": f"Bearer {secret}"})
    assert resp.status == 401


@pytest.mark.parametrize(
    "body, status, field",
    [
        ({"project_name": "nope", "rule_type": "branch", "pattern": "x"}, 404, "project_name"),
        ({"project_name": "inet", "rule_type": "branch", "pattern": "x", "matrix_name": "nope"}, 404, "matrix_name"),
        ({"project_name": "inet", "rule_type": "commit", "pattern": "x"}, 422, "rule_type"),
        ({"project_name": "inet", "rule_type": None, "pattern": "x"}, 422, "rule_type"),
        ({"project_name": "inet", "rule_type": "branch", "pattern": ""}, 422, "pattern"),
        ({"project_name": "inet", "rule_type": "branch", "pattern": "   "}, 422, "pattern"),
        ({"project_name": "inet", "rule_type": "branch", "pattern": "x" * 256}, 422, "pattern"),
        ({"project_name": "inet", "rule_type": "branch", "pattern": 5}, 422, "pattern"),
        ({"project_name": "inet", "rule_type": "branch", "pattern": "x", "enabled": "yes"}, 422, "enabled"),
        ({"project_name": "inet", "rule_type": "branch", "pattern": "x", "matrix_name": "other-m"}, 422, "matrix_name"),
        ({"project_name": "in\x00et", "rule_type": "branch", "pattern": "x"}, 422, "project_name"),
        ({"project_name": "inet", "rule_type": "branch", "pattern": "x", "matrix_name": "m\x00"}, 422, "matrix_name"),
        ({"project_name": "inet", "rule_type": "branch", "pattern": "a\x00b"}, 422, "pattern"),
    ],
)
async def test_rule_errors_name_the_field(client, admin_headers, body, status, field):
    await create_inet(client, admin_headers)
    await client.post("/api/projects", json={"name": "other", "github": "o/r"}, headers=admin_headers)
    resp = await client.post(
        "/api/matrices", json={"project_name": "other", "name": "other-m", "config": {"axes": {"kind": ["smoke"]}}},
        headers=admin_headers,
    )
    assert resp.status == 201
    resp = await client.post("/api/github/rules", json=body, headers=admin_headers)
    assert resp.status == status
    answer = await resp.json()
    assert answer["field"] == field
    assert answer["error"]
    resp = await client.get("/api/github/rules", headers=admin_headers)
    assert await resp.json() == []


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b"\xff\xfe", b""])
async def test_malformed_body_is_400(client, admin_headers, raw):
    resp = await client.post(
        "/api/github/rules", data=raw, headers={**admin_headers, "Content-Type": "application/json"}
    )
    assert resp.status == 400
    assert "error" in await resp.json()


@pytest.mark.parametrize("path", ["/api/github/rules", "/api/workers/poll", "/api/workers/result"])
@pytest.mark.parametrize(
    "raw, message",
    [
        (b'{"a": ' + b"1" * 5000 + b"}", "digits"),
        (b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),
    ],
    ids=["huge-int", "deep-nesting"],
)
async def test_pathological_json_is_400(client, admin_headers, path, raw, message):
    resp = await client.post(path, data=raw, headers={**admin_headers, "Content-Type": "application/json"})
    assert resp.status == 400
    answer = await resp.json()
    assert answer["error"].startswith("body is not valid JSON")
    assert message in answer["error"]


async def test_project_errors(client, admin_headers):
    resp = await client.post("/api/projects", json={"name": "inet", "github": "inet-framework/inet"}, headers=admin_headers)
    assert resp.status == 201
    for body, status, field in [
        ({"name": "inet", "github": "x/y"}, 409, "name"),
        ({"name": "inet2", "github": "INET-Framework/Inet"}, 409, "github"),
        ({"name": "", "github": "a/b"}, 422, "name"),
        ({"name": "bad name", "github": "a/b"}, 422, "name"),
        ({"name": "x", "github": "no-slash"}, 422, "github"),
        ({"name": "x"}, 422, "github_owner"),
    ]:
        resp = await client.post("/api/projects", json=body, headers=admin_headers)
        assert resp.status == status, body
        assert (await resp.json())["field"] == field, body


async def test_matrix_errors(client, admin_headers):
    await create_inet(client, admin_headers)
    big = {"axes": {"a": [str(i) for i in range(20)], "b": [str(i) for i in range(13)]}}
    for body, status, field in [
        ({"project_name": "nope", "name": "m", "config": {"axes": {"k": ["a"]}}}, 404, "project_name"),
        ({"project_name": "inet", "name": "m", "config": big}, 422, "config"),
        ({"project_name": "inet", "name": "m", "config": {"axes": {"k": []}}}, 422, "axes"),
        ({"project_name": "inet", "name": "m", "config": "nope"}, 422, "config"),
        ({"project_name": "inet", "name": "inet-full", "config": {"axes": {"k": ["a"]}}}, 409, "name"),
    ]:
        resp = await client.post("/api/matrices", json=body, headers=admin_headers)
        assert resp.status == status, body
        assert (await resp.json())["field"] == field, body


async def test_unknown_ids_are_404(client, admin_headers):
    for path in ["/api/github/rules/999", "/api/github/rules/abc", "/api/runs/5", "/api/matrix-runs/5"]:
        resp = await client.get(path, headers=admin_headers)
        assert resp.status == 404, path
        assert "error" in await resp.json()


async def test_runs_can_be_filtered_by_project_branch_pr_and_commit(client, db, readonly_headers):
    inet = await make_project(db)
    omnetpp = await make_project(db, "omnetpp", "omnetpp", "omnetpp")
    _, master = await queue_matrix_run(db, inet, [{"k": "a"}], sha="abcdef1" + "0" * 33)
    _, pr = await queue_matrix_run(db, inet, [{"k": "a"}, {"k": "b"}], sha="1234567" + "0" * 33, git_ref="topic", pr_number=7)
    _, other = await queue_matrix_run(db, omnetpp, [{"k": "a"}], sha="abcdef2" + "0" * 33, owner="omnetpp", repo="omnetpp")

    async def ids(query):
        resp = await client.get(f"/api/runs?{query}", headers=readonly_headers)
        assert resp.status == 200, await resp.text()
        return sorted(run["id"] for run in await resp.json())

    assert await ids("") == sorted(master + pr + other)
    assert await ids("project=inet") == sorted(master + pr)
    assert await ids("project=omnetpp") == other
    assert await ids("branch=master") == sorted(master + other)
    assert await ids("branch=master&project=inet") == master
    assert await ids("branch=maste") == []
    assert await ids("branch=topic&project=inet") == pr
    assert await ids("pr=7") == pr
    assert await ids("pr=8") == []
    assert await ids("commit=abcdef1") == master
    assert await ids("commit=ABCDEF2" + "0" * 33) == other
    assert await ids("commit=abcdef2&project=inet") == []
    assert await ids("status=queued&project=inet&limit=1") == [pr[-1]]


@pytest.mark.parametrize(
    "query, status, field",
    [
        ("project=nope", 404, "project"),
        ("pr=0", 422, "pr"),
        ("pr=-3", 422, "pr"),
        ("pr=abc", 422, "pr"),
        ("pr=99999999999", 422, "pr"),
        ("commit=abc", 422, "commit"),
        ("commit=xyz1234", 422, "commit"),
        ("commit=" + "a" * 65, 422, "commit"),
        ("branch=ma%00ster", 422, "branch"),
        ("project=in%0Aet", 422, "project"),
        ("status=%00", 422, "status"),
        ("branches=master", 422, "branches"),
        ("status=bogus", 422, "status"),
        ("limit=many", 422, "limit"),
    ],
)
async def test_bad_run_filters_are_refused_naming_the_field(client, db, readonly_headers, query, status, field):
    await make_project(db)
    resp = await client.get(f"/api/runs?{query}", headers=readonly_headers)
    assert resp.status == status
    answer = await resp.json()
    assert answer["field"] == field
    assert answer["error"]
