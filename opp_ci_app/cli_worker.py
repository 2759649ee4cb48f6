"""`opp_ci worker`: a small real worker that polls, runs a command and reports."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import signal
import socket
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import aiohttp
import click

from .workers import ResultCode

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_POLL_INTERVAL = 5.0
DEFAULT_LEASE_SECONDS = 300
# Heartbeats go out three times per lease, so one lost heartbeat never costs the run.
HEARTBEATS_PER_LEASE = 3
# How long a stopping worker still tries to report what it has.
STOP_REPORT_SECONDS = 5
OUTPUT_TAIL_BYTES = 64 * 1024
READ_CHUNK = 64 * 1024
RETRY_MAX_SECONDS = 60.0
KILL_GRACE_SECONDS = 5.0
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=30, connect=10)
ENV_PREFIX = "OPP_CI_"
EXIT_TERMINATED = 128 + signal.SIGTERM
TOKEN_HELP = "create one with: opp_ci token create --role worker --name NAME"


class WorkerError(click.ClickException):
    """A one-line error that stops the worker; exit 2."""

    exit_code = 2


class Unreachable(Exception):
    """The server did not answer (connection refused, timeout, 5xx)."""


class LeaseLost(Exception):
    """The server took the run back (reclaimed, cancelled or finished elsewhere)."""


@dataclasses.dataclass
class Outcome:
    result_code: ResultCode
    exit_code: int | None
    seconds: float
    stdout: str
    stderr: str
    details: str


def job_environment(job: dict[str, Any], base: dict[str, str]) -> dict[str, str]:
    """The command's environment: `base` less every OPP_CI_* variable, plus the cell and the run as OPP_CI_* variables."""
    # The command is the project's code: no token or key of opp_ci's on this machine reaches it.
    env = {k: v for k, v in base.items() if not k.startswith(ENV_PREFIX)}
    for axis, value in (job.get("cell") or {}).items():
        env[ENV_PREFIX + re.sub(r"[^A-Z0-9_]", "_", str(axis).upper())] = str(value)
    owner, repo, pr = job.get("github_owner"), job.get("github_repo"), job.get("github_pr_number")
    env.update(
        {
            "OPP_CI_RUN_ID": str(job["run_id"]),
            "OPP_CI_PROJECT": str(job.get("project") or ""),
            "OPP_CI_LABEL": str(job.get("label") or ""),
            "OPP_CI_GIT_REF": str(job.get("git_ref") or ""),
            "OPP_CI_COMMIT_SHA": str(job.get("commit_sha") or ""),
            "OPP_CI_GITHUB_REPOSITORY": f"{owner}/{repo}" if owner and repo else "",
            "OPP_CI_PR_NUMBER": "" if pr is None else str(pr),
        }
    )
    return env


async def _tail(stream: asyncio.StreamReader, limit: int = OUTPUT_TAIL_BYTES) -> str:
    """Everything the stream says, keeping only the last `limit` bytes in memory."""
    kept = bytearray()
    total = 0
    while chunk := await stream.read(READ_CHUNK):
        total += len(chunk)
        kept += chunk
        if len(kept) > limit:
            del kept[:-limit]
    text = kept.decode("utf-8", "replace")
    if total > len(kept):
        return f"[opp_ci worker: {total - len(kept)} earlier bytes left out]\n" + text
    return text


async def _stop(process: asyncio.subprocess.Process) -> None:
    """Terminate the command and everything it started; kill it if it does not go."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            await asyncio.wait_for(process.wait(), KILL_GRACE_SECONDS)
            return
        except asyncio.TimeoutError:
            continue


async def run_command(command: str, env: dict[str, str], lease_watch: Callable[[], Any]) -> Outcome:
    """Run `command` through the shell while `lease_watch()` heartbeats; PASS on exit 0, else FAIL."""
    started = time.monotonic()
    process = await asyncio.create_subprocess_shell(
        command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    outputs = asyncio.gather(_tail(process.stdout), _tail(process.stderr), process.wait())
    watcher = asyncio.ensure_future(lease_watch())
    try:
        done, _pending = await asyncio.wait({outputs, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if watcher in done and not outputs.done():
            watcher.result()  # raises LeaseLost
        stdout, stderr, code = await outputs
    except BaseException:
        await _stop(process)
        outputs.cancel()
        raise
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError, LeaseLost):
            await watcher
    seconds = round(time.monotonic() - started, 3)
    if code < 0:
        details = f"killed by signal {signal.Signals(-code).name}"
    else:
        details = f"exit code {code}"
    return Outcome(ResultCode.PASS if code == 0 else ResultCode.FAIL, code, seconds, stdout, stderr, details)


class Server:
    """The opp_ci server's worker API, as one worker sees it."""

    def __init__(self, session: aiohttp.ClientSession, url: str, name: str) -> None:
        self.session, self.url, self.name = session, url, name

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """POST JSON; auth failures stop the worker, an unreachable server raises Unreachable."""
        try:
            async with self.session.post(self.url + path, json=body) as resp:
                try:
                    answer = await resp.json(content_type=None)
                except ValueError:
                    answer = None
                if not isinstance(answer, dict):
                    answer = {"error": f"not a JSON answer (HTTP {resp.status})"}
                status = resp.status
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
            raise Unreachable(f"cannot reach {self.url}: {_reason(exc)}") from None
        if status == 401:
            raise WorkerError(f"{self.url} refused the worker token (401: {answer.get('error')}); {TOKEN_HELP}")
        if status == 403:
            raise WorkerError(f"{self.url} refused the worker token (403: {answer.get('error')}); {TOKEN_HELP}")
        if status >= 500:
            raise Unreachable(f"{self.url} answered {status}: {answer.get('error')}")
        return status, answer

    async def poll(self) -> tuple[dict[str, Any] | None, int]:
        status, answer = await self.post("/api/workers/poll", {"worker": self.name})
        if status != 200:
            raise WorkerError(f"poll refused ({status}): {answer.get('error')}")
        return answer.get("job"), int(answer.get("lease_seconds") or DEFAULT_LEASE_SECONDS)

    async def heartbeats(self, run_id: int, interval: float) -> None:
        """Keep the lease of `run_id` until cancelled; LeaseLost when the server took it back."""
        while True:
            await asyncio.sleep(interval)
            try:
                status, answer = await self.post("/api/workers/heartbeat", {"worker": self.name, "run_id": run_id})
            except Unreachable as exc:
                click.echo(f"run {run_id}: heartbeat failed ({exc}); the run goes on")
                continue
            if status in (404, 409):
                raise LeaseLost(answer.get("error") or f"HTTP {status}")

    async def report(self, run_id: int, outcome: Outcome) -> dict[str, Any]:
        """Send the result, retrying while the server is unreachable: a lost result would cost a rerun."""
        body = {
            "run_id": run_id,
            "worker": self.name,
            "result_code": outcome.result_code,
            "test_exec_seconds": outcome.seconds,
            "stdout": outcome.stdout,
            "stderr": outcome.stderr,
            "details": outcome.details,
        }
        delay = 1.0
        while True:
            try:
                status, answer = await self.post("/api/workers/result", body)
            except Unreachable as exc:
                click.echo(f"run {run_id}: cannot report yet ({exc}); retrying in {delay:.0f}s")
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)
                continue
            if status != 200:
                return {"dropped": f"{status}: {answer.get('error')}"}
            return answer


def _reason(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return text.split(" [", 1)[-1].rstrip("]") if "Cannot connect" in text else text


def _describe(job: dict[str, Any]) -> str:
    return f"run {job['run_id']} {job.get('label') or ''}".rstrip()


async def handle_job(server: Server, command: str, job: dict[str, Any], lease_seconds: int) -> None:
    """Run one job and report its outcome, printing one line when it starts and one when it ends."""
    run_id = job["run_id"]
    where = f"{job.get('github_owner')}/{job.get('github_repo')}@{str(job.get('commit_sha') or '')[:7]}"
    click.echo(f"{_describe(job)}: started ({job.get('project')}, {where})")
    interval = max(1.0, lease_seconds / HEARTBEATS_PER_LEASE)
    env = job_environment(job, dict(os.environ))
    try:
        outcome = await run_command(command, env, lambda: server.heartbeats(run_id, interval))
    except LeaseLost as exc:
        click.echo(f"{_describe(job)}: stopped, the server took the run back ({exc})")
        return
    except asyncio.CancelledError:
        click.echo(f"{_describe(job)}: stopped; reporting ERROR")
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                server.post(
                    "/api/workers/result",
                    {"run_id": run_id, "worker": server.name, "result_code": ResultCode.ERROR, "details": "the worker was stopped"},
                ),
                STOP_REPORT_SECONDS,
            )
        raise
    except OSError as exc:
        outcome = Outcome(ResultCode.ERROR, None, 0.0, "", str(exc), f"the command could not start: {exc.strerror or exc}")
    # A stop (SIGTERM, Ctrl-C) while reporting still lets the result reach the server.
    report = asyncio.ensure_future(server.report(run_id, outcome))
    try:
        answer = await asyncio.shield(report)
    except asyncio.CancelledError:
        click.echo(f"{_describe(job)}: {outcome.result_code}; stopping once the result is reported")
        with contextlib.suppress(Exception):
            await asyncio.wait_for(report, STOP_REPORT_SECONDS)
        raise
    line = f"{_describe(job)}: {outcome.result_code} in {outcome.seconds:.1f}s"
    if outcome.result_code != ResultCode.PASS:
        line += f" ({outcome.details})"
    if answer.get("dropped"):
        line += f"; the server dropped the result: {answer['dropped']}"
    click.echo(line)


async def work(server: Server, command: str, *, once: bool, poll_interval: float) -> None:
    """Poll and run jobs until stopped (or after one job with `once`)."""
    first = True
    delay = poll_interval
    waiting_said = False
    while True:
        try:
            job, lease_seconds = await server.poll()
        except Unreachable as exc:
            if first:
                raise WorkerError(str(exc)) from None
            click.echo(f"{exc}; retrying in {delay:.0f}s")
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)
            continue
        if first:
            click.echo(f"worker {server.name} polling {server.url}" + ("" if once else f" every {poll_interval:g}s (Ctrl-C to stop)"))
        first, delay = False, poll_interval
        if job is None:
            if once:
                click.echo("no queued runs")
                return
            if not waiting_said:
                click.echo("waiting for runs")
                waiting_said = True
            await asyncio.sleep(poll_interval)
            continue
        waiting_said = False
        await handle_job(server, command, job, lease_seconds)
        if once:
            return


def _token(token: str | None) -> str:
    if token:
        return token.strip()
    file_name = os.environ.get("OPP_CI_WORKER_TOKEN_FILE")
    if file_name:
        try:
            text = Path(file_name).expanduser().read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise WorkerError(f"OPP_CI_WORKER_TOKEN_FILE: cannot read {file_name}: {exc.strerror}") from None
        if text:
            return text
    raise WorkerError(f"no worker token: pass --token or set OPP_CI_WORKER_TOKEN (or OPP_CI_WORKER_TOKEN_FILE); {TOKEN_HELP}")


def _default_name() -> str:
    return f"{socket.gethostname()[:80]}-{os.getpid()}"


@click.command("worker")
@click.option("--command", "command", required=True, metavar="CMD", help="Shell command to run for each run.")
@click.option("--name", default=None, help="Worker name shown on runs [default: HOSTNAME-PID].")
@click.option(
    "--url",
    envvar="OPP_CI_PUBLIC_URL",
    default=DEFAULT_URL,
    show_default=True,
    help="The opp_ci server [env: OPP_CI_PUBLIC_URL].",
)
@click.option(
    "--token",
    envvar="OPP_CI_WORKER_TOKEN",
    default=None,
    help=(
        "API token with role worker [env: OPP_CI_WORKER_TOKEN]. On the command line it shows in `ps`;"
        " prefer a file named by OPP_CI_WORKER_TOKEN_FILE."
    ),
)
@click.option("--once", is_flag=True, help="Handle at most one run, then exit (exit at once when none is queued).")
@click.option(
    "--poll-interval",
    type=click.FloatRange(0.1, 3600),
    default=DEFAULT_POLL_INTERVAL,
    show_default=True,
    metavar="S",
    help="Seconds between polls while nothing is queued.",
)
def worker(command: str, name: str | None, url: str, token: str | None, once: bool, poll_interval: float) -> None:
    """Poll the server for runs and execute them with CMD.

    CMD runs through the shell, once per run, with the run's matrix cell in
    environment variables: each axis upper-cased (OPP_CI_KIND, OPP_CI_MODE, ...),
    plus OPP_CI_RUN_ID, OPP_CI_PROJECT, OPP_CI_LABEL, OPP_CI_GIT_REF,
    OPP_CI_COMMIT_SHA, OPP_CI_GITHUB_REPOSITORY (owner/repo) and OPP_CI_PR_NUMBER
    (empty for pushes); no other OPP_CI_* variable (tokens, keys) reaches CMD.
    Exit status 0 reports PASS, anything else FAIL, with the last 64 KiB of
    stdout and stderr and the time it took. While CMD runs the worker sends
    heartbeats; if the server takes the run back, CMD is stopped.

    Example, the whole loop on one machine:

    \b
      opp_ci token create --role worker --name laptop   # prints the token once
      OPP_CI_WORKER_TOKEN=oppci_... opp_ci worker --command true

    \b
      opp_ci worker --command 'make -C tests/$OPP_CI_KIND MODE=$OPP_CI_MODE'
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise WorkerError(f"--url must be an http(s) URL, got {url!r}")
    secret = _token(token)
    name = (name or _default_name()).strip()
    if not name or len(name) > 100 or not name.isprintable():
        raise WorkerError("--name must be 1 to 100 printable characters")

    async def main() -> None:
        # SIGTERM (systemd stop, kill) ends the worker like Ctrl-C: the command is stopped and reported.
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)
        headers = {"Authorization": f"Bearer {secret}"}
        async with aiohttp.ClientSession(headers=headers, timeout=REQUEST_TIMEOUT) as session:
            await work(Server(session, url.rstrip("/"), name), command, once=once, poll_interval=poll_interval)

    try:
        asyncio.run(main())
    except asyncio.CancelledError:
        click.echo("worker stopped")
        raise SystemExit(EXIT_TERMINATED) from None
