"""The fake GitHub itself: it answers like GitHub, records, fails on cue and rejects what GitHub would."""

import time

import aiohttp
import jwt
import pytest

from tests.plugins.fake_github import ACTIONS_TOKEN, USER_TOKEN

USER = {"Authorization": f"token {USER_TOKEN}"}


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def test_status_is_recorded_in_order(fake_github, http):
    for state in ("pending", "success"):
        async with http.post(
            f"{fake_github.url}/repos/inet-framework/inet/statuses/{'a' * 40}",
            json={"state": state, "context": "opp_ci/smoke", "description": "d", "target_url": None},
            headers=USER,
        ) as resp:
            assert resp.status == 201
            assert resp.headers["x-ratelimit-remaining"].isdigit()
    posted = fake_github.statuses("Inet-Framework", "INET", "a" * 40)
    assert [s["state"] for s in posted] == ["pending", "success"]
    assert fake_github.requests("POST", r"/repos/.*/statuses/.*")[0].json["context"] == "opp_ci/smoke"


async def test_bad_token_is_401(fake_github, http):
    async with http.get(f"{fake_github.url}/user", headers={"Authorization": "token nope"}) as resp:
        assert resp.status == 401
        assert (await resp.json())["message"] == "Bad credentials"


async def test_request_github_would_reject_is_a_violation(fake_github, http):
    url = f"{fake_github.url}/repos/o/r/statuses/{'b' * 40}"
    async with http.post(url, json={"state": "green"}, headers=USER) as resp:
        assert resp.status == 422
    async with http.post(url, json={"state": "success", "description": "x" * 141}, headers=USER) as resp:
        assert resp.status == 422
    async with http.post(url, json={"state": "success", "desc": "typo"}, headers=USER) as resp:
        assert resp.status == 422
    async with http.get(f"{fake_github.url}/repos/o/r/nonsense", headers=USER) as resp:
        assert resp.status == 404
    assert len(fake_github.violations) == 4
    assert "'green' is not one of" in fake_github.violations[0]
    assert "too long (maximum is 140" in fake_github.violations[1]
    assert "desc" in fake_github.violations[2]
    assert "no such operation" in fake_github.violations[3]
    assert fake_github.statuses("o", "r", "b" * 40) == []
    fake_github.violations.clear()


async def test_comments_are_paginated_with_link(fake_github, http):
    for i in range(35):
        fake_github.add_comment("o", "r", 7, f"c{i}", "someone")
    url = f"{fake_github.url}/repos/o/r/issues/7/comments"
    async with http.get(url, headers=USER) as resp:
        first = await resp.json()
        link = resp.headers["Link"]
    assert len(first) == 30
    assert 'rel="next"' in link
    next_url = link.split(";")[0].strip("<>")
    async with http.get(next_url, headers=USER) as resp:
        second = await resp.json()
        assert 'rel="next"' not in resp.headers.get("Link", "")
    assert [c["body"] for c in first + second] == [f"c{i}" for i in range(35)]


async def test_comment_edit_only_by_author(fake_github, http):
    other = fake_github.add_comment("o", "r", 1, "theirs", "someone-else")
    async with http.patch(
        f"{fake_github.url}/repos/o/r/issues/comments/{other['id']}", json={"body": "mine"}, headers=USER
    ) as resp:
        assert resp.status == 403
    async with http.post(f"{fake_github.url}/repos/o/r/issues/1/comments", json={"body": "hi"}, headers=USER) as resp:
        created = await resp.json()
        assert resp.status == 201
    async with http.patch(
        f"{fake_github.url}/repos/o/r/issues/comments/{created['id']}", json={"body": "edited"}, headers=USER
    ) as resp:
        assert resp.status == 200
    assert [(c["body"], c["user"]["login"]) for c in fake_github.comments("o", "r", 1)] == [
        ("theirs", "someone-else"),
        ("edited", fake_github.user_login),
    ]


async def test_scripted_failures_then_recovery(fake_github, http):
    fake_github.fail("POST", r"/repos/.*/statuses/.*", 503, times=2)
    fake_github.fail("GET", r"/user", 429, headers={"retry-after": "7"})
    url = f"{fake_github.url}/repos/o/r/statuses/{'c' * 40}"
    codes = []
    for _ in range(3):
        async with http.post(url, json={"state": "success"}, headers=USER) as resp:
            codes.append(resp.status)
    assert codes == [503, 503, 201]
    async with http.get(f"{fake_github.url}/user", headers=USER) as resp:
        assert resp.status == 429
        assert resp.headers["retry-after"] == "7"
    async with http.get(f"{fake_github.url}/user", headers=USER) as resp:
        assert (await resp.json())["login"] == fake_github.user_login
    assert len(fake_github.statuses("o", "r", "c" * 40)) == 1


async def test_delay_makes_client_time_out(fake_github, http):
    fake_github.fail("GET", r"/user", 504, delay=1)
    with pytest.raises(TimeoutError):
        async with http.get(f"{fake_github.url}/user", headers=USER, timeout=aiohttp.ClientTimeout(total=0.1)):
            pass


async def test_app_jwt_is_verified_with_public_key(fake_github, http):
    pem = fake_github.set_app(app_id=99, slug="opp-ci-test", installation_id=7)
    now = int(time.time())
    good = jwt.encode({"iat": now - 60, "exp": now + 500, "iss": "99"}, pem, algorithm="RS256")
    async with http.get(f"{fake_github.url}/app", headers={"Authorization": f"Bearer {good}"}) as resp:
        assert resp.status == 200
        assert (await resp.json())["slug"] == "opp-ci-test"
    from tests.plugins.fake_github import generate_rsa_key

    other_pem, _ = generate_rsa_key()
    forged = jwt.encode({"iat": now - 60, "exp": now + 500, "iss": "99"}, other_pem, algorithm="RS256")
    too_long = jwt.encode({"iat": now - 60, "exp": now + 3600, "iss": "99"}, pem, algorithm="RS256")
    for bad in (forged, too_long, USER_TOKEN):
        async with http.post(
            f"{fake_github.url}/app/installations/7/access_tokens", headers={"Authorization": f"Bearer {bad}"}
        ) as resp:
            assert resp.status == 401
    async with http.post(
        f"{fake_github.url}/app/installations/7/access_tokens", headers={"Authorization": f"Bearer {good}"}
    ) as resp:
        assert resp.status == 201
        token = (await resp.json())["token"]
    async with http.get(f"{fake_github.url}/user", headers={"Authorization": f"token {token}"}) as resp:
        assert resp.status == 403
    assert [m["token"] for m in fake_github.minted] == [token]


async def test_manifest_code_works_once(fake_github, http):
    url = f"{fake_github.url}/app-manifests/abc123/conversions"
    async with http.post(url) as resp:
        assert resp.status == 201
        data = await resp.json()
    assert data["pem"] == fake_github.app_private_key_pem
    assert data["slug"] == fake_github.app_slug
    async with http.post(url) as resp:
        assert resp.status == 404


async def test_pr_get_has_etag(fake_github, http):
    fake_github.set_pr("o", "r", 5, head_sha="d" * 40)
    url = f"{fake_github.url}/repos/o/r/pulls/5"
    async with http.get(url, headers=USER) as resp:
        etag = resp.headers["ETag"]
        assert (await resp.json())["head"]["sha"] == "d" * 40
    async with http.get(url, headers={**USER, "If-None-Match": etag}) as resp:
        assert resp.status == 304


async def test_dispatch_answers_204(fake_github, http):
    async with http.post(
        f"{fake_github.url}/repos/o/r/actions/workflows/ci-notes.yml/dispatches",
        json={"ref": "master"},
        headers={"Authorization": f"Bearer {ACTIONS_TOKEN}"},
    ) as resp:
        assert resp.status == 204
    assert fake_github.dispatches("o", "r") == [("ci-notes.yml", {"ref": "master"}, ACTIONS_TOKEN)]
