"""The `opp_ci` CLI as a new user meets it: help, the walkthrough, and one-line errors with exit 2."""

import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from opp_ci_app.cli import main

HOLD_PORT = (
    "import socket, sys\n"
    "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
    "print(s.getsockname()[1], flush=True); sys.stdin.read()"
)


def test_walkthrough(opp_ci):
    code, out, _ = opp_ci("project", "create", "--name", "inet", "--github", "inet-framework/inet")
    assert code == 0 and "created project inet" in out
    code, out, _ = opp_ci(
        "matrix", "create", "--project", "inet", "--name", "inet-full",
        "--axis", "kind=smoke,fingerprint", "--axis", "mode=release,debug", "--exclude", "kind=smoke,mode=debug",
    )
    assert code == 0
    assert "3 cells: smoke/release, fingerprint/release, fingerprint/debug" in out
    assert opp_ci("rule", "create", "--project", "inet", "--type", "branch", "--pattern", "master", "--matrix", "inet-full")[0] == 0
    assert opp_ci("rule", "create", "--project", "inet", "--type", "pr", "--pattern", "*", "--disabled")[0] == 0
    code, out, _ = opp_ci("rule", "list", "--json")
    rules = json.loads(out)
    assert [(r["rule_type"], r["pattern"], r["matrix_name"], r["enabled"]) for r in rules] == [
        ("branch", "master", "inet-full", True),
        ("pr", "*", None, False),
    ]
    code, out, _ = opp_ci("rule", "list")
    assert "master" in out and "inet-full" in out and "(smoke)" in out
    code, out, _ = opp_ci("project", "list")
    assert "inet-framework/inet" in out
    code, out, _ = opp_ci("matrix", "list", "--json")
    assert json.loads(out)[0]["cells"] == ["smoke/release", "fingerprint/release", "fingerprint/debug"]
    code, out, _ = opp_ci("rule", "delete", str(rules[1]["id"]))
    assert code == 0 and json.loads(opp_ci("rule", "list", "--json")[1])[0]["pattern"] == "master"


def test_matrix_from_config_file(opp_ci, tmp_path):
    opp_ci("project", "create", "--name", "inet", "--github", "inet-framework/inet")
    config = tmp_path / "m.json"
    config.write_text(json.dumps({"axes": {"kind": ["smoke"], "omnetpp": ["6.0", "6.1"]}, "include": [{"kind": "feature", "omnetpp": "6.4"}]}))
    code, out, _ = opp_ci("matrix", "create", "--project", "inet", "--name", "m", "--config", str(config))
    assert code == 0 and "smoke/6.0, smoke/6.1, feature/6.4" in out


def test_token_lifecycle(opp_ci):
    code, out, err = opp_ci("token", "create", "--role", "admin", "--name", "me")
    token = out.strip()
    assert code == 0 and token.startswith("oppci_") and len(token) > 40
    assert "not shown again" in err
    code, out, _ = opp_ci("token", "list")
    assert token not in out and token[:10] in out and "admin" in out and "active" in out
    assert opp_ci("token", "revoke", "1")[0] == 0
    assert "revoked" in opp_ci("token", "list")[1]


@pytest.mark.parametrize(
    "args, message",
    [
        (["rule", "create", "--project", "nope", "--type", "branch", "--pattern", "x"], "no project named 'nope'"),
        (["rule", "create", "--project", "inet", "--type", "branch", "--pattern", "x", "--matrix", "nope"], "no matrix named 'nope'"),
        (["rule", "create", "--project", "inet", "--type", "commit", "--pattern", "x"], "'commit' is not one of"),
        (["rule", "create", "--project", "inet", "--type", "branch", "--pattern", ""], "pattern must be a non-empty string"),
        (["rule", "create", "--project", "inet", "--type", "branch"], "Missing option '--pattern'"),
        (["rule", "delete", "999"], "no rule with id 999"),
        (["rule", "delete", "abc"], "'abc' is not a valid integer"),
        (["project", "create", "--name", "inet", "--github", "x/y"], "already exists"),
        (["project", "create", "--name", "x", "--github", "inet-framework"], "OWNER/REPO"),
        (["matrix", "create", "--project", "inet", "--name", "m", "--axis", "kind"], "expected NAME=V1,V2"),
        (["matrix", "create", "--project", "inet", "--name", "m", "--config", "/nonexistent.json"], "/nonexistent.json"),
        (["matrix", "delete", "used"], "used by rule"),
        (["token", "create", "--role", "root"], "'root' is not one of"),
        (["token", "revoke", "42"], "no token with id 42"),
        (["frobnicate"], "No such command 'frobnicate'"),
    ],
)
def test_errors_are_one_line_and_exit_2(opp_ci, args, message):
    opp_ci("project", "create", "--name", "inet", "--github", "inet-framework/inet")
    opp_ci("matrix", "create", "--project", "inet", "--name", "used", "--axis", "kind=smoke")
    opp_ci("rule", "create", "--project", "inet", "--type", "branch", "--pattern", "m", "--matrix", "used")
    code, out, err = opp_ci(*args)
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert message in err
    assert "Traceback" not in err + out


def test_bad_database_url_is_one_line(monkeypatch, capsys):
    monkeypatch.setenv("OPP_CI_DATABASE_URL", "oracle://x")
    with pytest.raises(SystemExit) as info:
        main(["rule", "list"])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip() == "opp_ci: error: OPP_CI_DATABASE_URL: driver 'oracle' is not one of sqlite+aiosqlite, postgresql+asyncpg"


@pytest.mark.parametrize(
    "args",
    [[], ["serve"], ["db", "upgrade"], ["project", "create"], ["matrix", "create"], ["rule", "create"], ["rule", "list"],
     ["rule", "delete"], ["rule", "test-webhook"], ["token", "create"], ["worker"], ["notes"]],
)
def test_help_everywhere(args):
    result = subprocess.run(
        [sys.executable, "-m", "opp_ci_app", *args, "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: opp_ci")


def serve_env(database_url, tmp_path) -> dict[str, str]:
    """The environment of `opp_ci serve` on the test database, without the caller's OPP_CI_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPP_CI_")}
    return {**env, "HOME": str(tmp_path), "OPP_CI_DATABASE_URL": database_url, "OPP_CI_VAR_DIR": str(tmp_path / "var")}


def test_serve_on_a_busy_port_is_one_line_and_exit_2(database_url, tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_PORT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        port = int(holder.stdout.readline())
        result = subprocess.run(
            [sys.executable, "-m", "opp_ci_app", "serve", "--port", str(port)],
            env=serve_env(database_url, tmp_path), capture_output=True, text=True, timeout=60,
        )
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == f"opp_ci: error: cannot listen on 127.0.0.1:{port}: address already in use"
    assert "serving on" not in result.stderr
    assert "Traceback" not in result.stderr
    assert "Exception closing connection" not in result.stderr


def test_serve_says_serving_once_listening_and_stops_cleanly(database_url, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "opp_ci_app", "serve", "--port", str(port)],
        env=serve_env(database_url, tmp_path), stderr=subprocess.PIPE, text=True,
    )
    log = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any("serving on" in line for line in log):
            if select.select([server.stderr], [], [], 1)[0]:
                line = server.stderr.readline()
                if not line:
                    break
                log.append(line)
        assert f"serving on http://127.0.0.1:{port} (no GitHub credentials)" in "".join(log)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as resp:
            assert json.load(resp) == {"ok": True}
    finally:
        server.send_signal(signal.SIGINT)
        _, rest = server.communicate(timeout=30)
    output = "".join(log) + rest
    assert server.returncode == 0, output
    assert "Traceback" not in output
    assert "Exception closing connection" not in output


def test_log_lines_carry_the_extra_fields(opp_ci, monkeypatch, capsys):
    monkeypatch.setattr(logging.root, "handlers", [])
    monkeypatch.setattr(logging.root, "level", logging.root.level)
    code, _, _ = opp_ci("db", "upgrade")
    assert code == 0
    log = logging.getLogger("opp_ci_app.workers")
    log.info("run claimed", extra={"run_id": 7, "worker": "lab pc 3"})
    log.info("run result dropped", extra={"run_id": 8, "reason": 'say "hi"\nbye', "empty": ""})
    log.info("plain")
    err = capsys.readouterr().err
    assert 'opp_ci_app.workers: run claimed run_id=7 worker="lab pc 3"\n' in err
    assert 'opp_ci_app.workers: run result dropped run_id=8 reason="say \\"hi\\"\\nbye" empty=""\n' in err
    assert "opp_ci_app.workers: plain\n" in err
