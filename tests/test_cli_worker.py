"""`opp_ci worker` as a real process against a real server: commands, environment, heartbeats, errors."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from aiohttp.test_utils import TestServer
from sqlalchemy import update

from opp_ci_app.app import create_app
from opp_ci_app.cli_worker import job_environment
from opp_ci_app.models import Role, RunStatus, TestRun
from tests.test_workers import SHA, get_run, make_project, queue_matrix_run

WORKER_TIMEOUT = 60


@pytest.fixture
async def server(aiohttp_client, settings, engine):
    """The app with a 3-second lease, so heartbeats come every second."""
    app = create_app(settings.replace(worker_lease_seconds=3), engine=engine, background=False)
    client = await aiohttp_client(app)
    return str(client.make_url("")).rstrip("/")


@pytest.fixture
async def worker_token(make_token) -> str:
    return await make_token(Role.WORKER, "test-worker")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPP_CI_")}
    env.update(extra)
    return env


async def start_worker(*args: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "opp_ci_app", "worker", *args,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )


async def finish(process: asyncio.subprocess.Process) -> tuple[int, str, str]:
    out, err = await asyncio.wait_for(process.communicate(), WORKER_TIMEOUT)
    return process.returncode, out.decode(), err.decode()


async def run_worker(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    return await finish(await start_worker(*args, env=env))


async def wait_for_status(db, run_id: int, status: RunStatus) -> TestRun:
    deadline = time.monotonic() + WORKER_TIMEOUT
    while time.monotonic() < deadline:
        run = await get_run(db, run_id)
        if run.status == status:
            return run
        await asyncio.sleep(0.1)
    raise AssertionError(f"run {run_id} never became {status}")


async def test_true_passes_and_false_fails(server, db, worker_token):
    project_id = await make_project(db)
    _mr, run_ids = await queue_matrix_run(db, project_id, [{"kind": "smoke"}, {"kind": "build"}])
    env = clean_env(OPP_CI_WORKER_TOKEN=worker_token)

    code, out, err = await run_worker("--command", "echo hello; echo oops >&2; true", "--url", server, "--once", "--name", "laptop", env=env)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == f"worker laptop polling {server}"
    assert lines[1] == f"run {run_ids[0]} smoke: started (inet, inet-framework/inet@aaaaaaa)"
    assert lines[2].startswith(f"run {run_ids[0]} smoke: PASS in ") and lines[2].endswith("s")
    run = await get_run(db, run_ids[0])
    assert (run.status, run.result_code, run.worker) == (RunStatus.PASSED, "PASS", "laptop")
    assert (run.stdout, run.stderr, run.details) == ("hello\n", "oops\n", "exit code 0")
    assert 0 <= run.test_exec_seconds < WORKER_TIMEOUT

    code, out, err = await run_worker("--command", "exit 3", "--url", server, "--once", env=env)
    assert code == 0
    assert out.splitlines()[-1].startswith(f"run {run_ids[1]} build: FAIL in ")
    assert out.splitlines()[-1].endswith("s (exit code 3)")
    run = await get_run(db, run_ids[1])
    assert (run.status, run.result_code, run.details) == (RunStatus.FAILED, "FAIL", "exit code 3")

    code, out, _err = await run_worker("--command", "true", "--url", server, "--once", env=env)
    assert (code, out.splitlines()[-1]) == (0, "no queued runs")


async def test_the_command_gets_the_cell_and_the_run_in_its_environment(server, db, worker_token, tmp_path):
    project_id = await make_project(db)
    _mr, [run_id] = await queue_matrix_run(
        db, project_id, [{"kind": "fingerprint", "mode": "debug", "omnetpp-version": "6.1"}], pr_number=7, git_ref="topic/x"
    )
    token_file = tmp_path / "token"
    token_file.write_text(worker_token + "\n")
    env = clean_env(
        OPP_CI_WORKER_TOKEN_FILE=str(token_file),
        OPP_CI_GITHUB_TOKEN="ghp_leak",
        OPP_CI_GITHUB_ACTIONS_TOKEN_FILE="/secret/actions",
        OPP_CI_GITHUB_APP_PRIVATE_KEY="-----BEGIN RSA PRIVATE KEY-----",
        OPP_CI_GITHUB_WEBHOOK_SECRET="hush",
        OPP_CI_DATABASE_URL="postgresql+asyncpg://ci:pw@db/ci",
    )
    code, _out, err = await run_worker("--command", "env | grep ^OPP_CI_ | sort", "--url", server, "--once", env=env)
    assert (code, err) == (0, "")
    run = await get_run(db, run_id)
    assert run.stdout.splitlines() == [
        f"OPP_CI_COMMIT_SHA={SHA}",
        "OPP_CI_GITHUB_REPOSITORY=inet-framework/inet",
        "OPP_CI_GIT_REF=topic/x",
        "OPP_CI_KIND=fingerprint",
        "OPP_CI_LABEL=fingerprint/debug/6.1",
        "OPP_CI_MODE=debug",
        "OPP_CI_OMNETPP_VERSION=6.1",
        "OPP_CI_PROJECT=inet",
        "OPP_CI_PR_NUMBER=7",
        f"OPP_CI_RUN_ID={run_id}",
    ]


def test_no_opp_ci_variable_of_the_worker_reaches_the_command():
    secrets = {
        name: "secret"
        for base in ("OPP_CI_WORKER_TOKEN", "OPP_CI_GITHUB_TOKEN", "OPP_CI_GITHUB_ACTIONS_TOKEN",
                     "OPP_CI_GITHUB_APP_PRIVATE_KEY", "OPP_CI_GITHUB_WEBHOOK_SECRET")
        for name in (base, base + "_FILE")
    }
    env = job_environment(
        {"run_id": 1, "cell": {"kind": "smoke"}, "github_pr_number": None},
        {**secrets, "OPP_CI_KIND": "stale", "PATH": "/bin", "HOME": "/home/ci"},
    )
    assert "secret" not in env.values()
    assert (env["PATH"], env["HOME"], env["OPP_CI_KIND"], env["OPP_CI_PR_NUMBER"]) == ("/bin", "/home/ci", "smoke", "")


def test_token_help_warns_about_ps():
    result = subprocess.run(
        [sys.executable, "-m", "opp_ci_app", "worker", "--help"], capture_output=True, text=True, timeout=60
    )
    assert "shows in `ps`" in " ".join(result.stdout.split())
    assert "OPP_CI_WORKER_TOKEN_FILE" in result.stdout


async def test_heartbeats_keep_a_long_run_alive(server, db, worker_token):
    project_id = await make_project(db)
    _mr, [run_id] = await queue_matrix_run(db, project_id, [{"kind": "smoke"}])
    code, _out, _err = await run_worker(
        "--command", "sleep 2.5", "--url", server, "--once", env=clean_env(OPP_CI_WORKER_TOKEN=worker_token)
    )
    assert code == 0
    run = await get_run(db, run_id)
    assert run.status == RunStatus.PASSED
    assert (run.heartbeat_at - run.started_at).total_seconds() >= 1.5


async def test_a_run_taken_back_by_the_server_stops_the_command(server, db, worker_token):
    project_id = await make_project(db)
    _mr, [run_id] = await queue_matrix_run(db, project_id, [{"kind": "smoke"}])
    started = time.monotonic()
    process = await start_worker("--command", "sleep 30", "--url", server, "--once", env=clean_env(OPP_CI_WORKER_TOKEN=worker_token))
    await wait_for_status(db, run_id, RunStatus.RUNNING)
    async with db.begin() as session:
        await session.execute(update(TestRun).where(TestRun.id == run_id).values(status=RunStatus.CANCELLED))
    code, out, _err = await finish(process)
    assert code == 0
    assert time.monotonic() - started < 20
    assert f"run {run_id} smoke: stopped, the server took the run back" in out
    assert (await get_run(db, run_id)).status == RunStatus.CANCELLED


async def test_ctrl_c_stops_the_command_and_reports_error(server, db, worker_token):
    project_id = await make_project(db)
    _mr, [run_id] = await queue_matrix_run(db, project_id, [{"kind": "smoke"}])
    process = await start_worker("--command", "sleep 30", "--url", server, env=clean_env(OPP_CI_WORKER_TOKEN=worker_token))
    await wait_for_status(db, run_id, RunStatus.RUNNING)
    process.send_signal(signal.SIGINT)
    code, out, err = await finish(process)
    assert code == 1 and err.strip() == "aborted"  # the CLI's answer to Ctrl-C
    assert f"run {run_id} smoke: stopped; reporting ERROR" in out
    run = await get_run(db, run_id)
    assert (run.status, run.details) == (RunStatus.ERROR, "the worker was stopped")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_clear_one_line_errors_that_never_show_the_token(server, make_token, worker_token):
    readonly = await make_token(Role.READONLY)
    cases = [
        (clean_env(), [], "opp_ci: error: no worker token: pass --token or set OPP_CI_WORKER_TOKEN"),
        (clean_env(OPP_CI_WORKER_TOKEN="oppci_wrong"), [], f"opp_ci: error: {server} refused the worker token (401: "),
        (clean_env(OPP_CI_WORKER_TOKEN=readonly), [], f"opp_ci: error: {server} refused the worker token (403: "),
        (clean_env(), ["--token", worker_token, "--url", f"http://127.0.0.1:{free_port()}"], "opp_ci: error: cannot reach http://127.0.0.1:"),
        (clean_env(OPP_CI_WORKER_TOKEN_FILE="/nonexistent/token"), [], "opp_ci: error: OPP_CI_WORKER_TOKEN_FILE: cannot read /nonexistent/token"),
        (clean_env(OPP_CI_WORKER_TOKEN=worker_token), ["--url", "ftp://x"], "opp_ci: error: --url must be an http(s) URL"),
    ]
    for env, extra, message in cases:
        args = ["--command", "true", "--once", *(extra if "--url" in extra else [*extra, "--url", server])]
        code, out, err = await run_worker(*args, env=env)
        assert code == 2, (message, out, err)
        assert err.startswith(message), err
        assert err.count("\n") == 1 and "Traceback" not in err
        for secret in (worker_token, readonly, "oppci_wrong"):
            assert secret not in out + err


async def test_help_documents_the_environment():
    code, out, _err = await run_worker("--help", env=clean_env())
    assert code == 0
    for text in ("--command CMD", "OPP_CI_KIND", "OPP_CI_COMMIT_SHA", "OPP_CI_WORKER_TOKEN", "--once", "--poll-interval", "opp_ci worker --command true"):
        assert text in out


async def test_sigterm_stops_the_command_and_reports_error(server, db, worker_token, tmp_path):
    project_id = await make_project(db)
    _mr, [run_id] = await queue_matrix_run(db, project_id, [{"kind": "smoke"}])
    marker = tmp_path / "still-running"
    process = await start_worker(
        "--command", f"sleep 2; touch {marker}", "--url", server, env=clean_env(OPP_CI_WORKER_TOKEN=worker_token)
    )
    await wait_for_status(db, run_id, RunStatus.RUNNING)
    process.terminate()
    code, out, _err = await finish(process)
    assert code == 143
    assert out.splitlines()[-2:] == [f"run {run_id} smoke: stopped; reporting ERROR", "worker stopped"]
    assert (await get_run(db, run_id)).status == RunStatus.ERROR
    await asyncio.sleep(2.5)
    assert not marker.exists()  # the command was stopped with the worker, not left behind


async def test_a_result_waits_for_a_restarted_server(settings, engine, db, worker_token):
    """The server goes away while the command runs; the worker keeps the result until it is back."""
    port = free_port()
    settings = settings.replace(worker_lease_seconds=3)
    first = TestServer(create_app(settings, engine=engine, background=False), host="127.0.0.1", port=port)
    await first.start_server()
    project_id = await make_project(db)
    _mr, [run_id] = await queue_matrix_run(db, project_id, [{"kind": "smoke"}])
    process = await start_worker(
        "--command", "sleep 2", "--url", f"http://127.0.0.1:{port}", "--once", env=clean_env(OPP_CI_WORKER_TOKEN=worker_token)
    )
    await wait_for_status(db, run_id, RunStatus.RUNNING)
    await first.close()
    await asyncio.sleep(3.5)
    second = TestServer(create_app(settings, engine=engine, background=False), host="127.0.0.1", port=port)
    await second.start_server()
    try:
        code, out, err = await finish(process)
    finally:
        await second.close()
    assert (code, err) == (0, "")
    assert f"run {run_id}: cannot report yet (cannot reach http://127.0.0.1:{port}" in out
    assert out.splitlines()[-1].startswith(f"run {run_id} smoke: PASS in ")
    assert (await get_run(db, run_id)).status == RunStatus.PASSED


async def test_a_stop_while_reporting_still_reports_the_result():
    """SIGTERM right after the command ends must not lose its result (the run would wait for the reaper)."""
    from opp_ci_app.cli_worker import handle_job
    from opp_ci_app.workers import ResultCode

    reporting = asyncio.Event()
    reported = []

    class SlowServer:
        name = "w1"

        async def heartbeats(self, run_id, interval):
            await asyncio.Event().wait()

        async def post(self, path, body):
            return {}

        async def report(self, run_id, outcome):
            reporting.set()
            await asyncio.sleep(0.2)
            reported.append((run_id, outcome.result_code))
            return {}

    task = asyncio.create_task(handle_job(SlowServer(), "true", {"run_id": 5, "label": "smoke"}, 300))
    await reporting.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert reported == [(5, ResultCode.PASS)]
