"""Configuration: defaults, secrets from files, and one clear line for every bad value."""

import os
import stat
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from opp_ci_app.config import ConfigError, Settings, ensure_webhook_secret, load_settings


def pem(key) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


@pytest.fixture(autouse=True)
def no_home_token_files(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def test_defaults():
    settings = load_settings({})
    assert settings.database_url == "sqlite+aiosqlite:///var/opp_ci.db"
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert settings.public_url == "http://127.0.0.1:8080"
    assert settings.github_base_url == "https://api.github.com"
    assert settings.status_context == "opp_ci"
    assert settings.notes_workflow == "ci-notes.yml"
    assert settings.webhook_secret is None and settings.github_token is None
    assert not settings.app_mode


def test_secret_from_file_and_variable_wins(tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-file\n")
    env = {"OPP_CI_GITHUB_WEBHOOK_SECRET_FILE": str(secret_file)}
    assert load_settings(env).webhook_secret == "from-file"
    assert load_settings(env).webhook_secret_from_env and not load_settings({}).webhook_secret_from_env
    env["OPP_CI_GITHUB_WEBHOOK_SECRET"] = "from-env"
    assert load_settings(env).webhook_secret == "from-env"


def test_token_default_file(tmp_path):
    ssh = tmp_path / "home" / ".ssh"
    ssh.mkdir(parents=True)
    (ssh / "opp_ci_github_token").write_text("ghp_x\n")
    (ssh / "opp_ci_github_actions_token").write_text("ghs_y\n")
    settings = load_settings({})
    assert (settings.github_token, settings.github_actions_token) == ("ghp_x", "ghs_y")
    assert "ghp_x" not in repr(settings) and "ghs_y" not in repr(settings)


def test_app_mode_with_rsa_key(tmp_path):
    key_file = tmp_path / "key.pem"
    key_file.write_text(pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)))
    settings = load_settings({"OPP_CI_GITHUB_APP_ID": "12345", "OPP_CI_GITHUB_APP_PRIVATE_KEY_FILE": str(key_file)})
    assert settings.app_mode and settings.github_app_id == "12345"


@pytest.mark.parametrize(
    "env, variable",
    [
        ({"OPP_CI_DATABASE_URL": "not a url"}, "OPP_CI_DATABASE_URL"),
        ({"OPP_CI_DATABASE_URL": "mysql://x/y"}, "OPP_CI_DATABASE_URL"),
        ({"OPP_CI_DATABASE_URL": "postgresql+asyncpg://x@[::1/db"}, "OPP_CI_DATABASE_URL"),
        ({"OPP_CI_PUBLIC_URL": "http://[::1"}, "OPP_CI_PUBLIC_URL"),
        ({"OPP_CI_PUBLIC_URL": "http://x:99999/"}, "OPP_CI_PUBLIC_URL"),
        ({"OPP_CI_GITHUB_BASE_URL": "http://[::1"}, "OPP_CI_GITHUB_BASE_URL"),
        ({"OPP_CI_PUBLIC_URL": "ftp://x"}, "OPP_CI_PUBLIC_URL"),
        ({"OPP_CI_GITHUB_BASE_URL": "nohost"}, "OPP_CI_GITHUB_BASE_URL"),
        ({"OPP_CI_PORT": "eighty"}, "OPP_CI_PORT"),
        ({"OPP_CI_PORT": "70000"}, "OPP_CI_PORT"),
        ({"OPP_CI_WORKER_LEASE_SECONDS": "-1"}, "OPP_CI_WORKER_LEASE_SECONDS"),
        ({"OPP_CI_GITHUB_APP_ID": "abc"}, "OPP_CI_GITHUB_APP_ID"),
        ({"OPP_CI_GITHUB_APP_ID": "1", "OPP_CI_GITHUB_APP_PRIVATE_KEY": "not a pem"}, "OPP_CI_GITHUB_APP_PRIVATE_KEY"),
        ({"OPP_CI_GITHUB_APP_ID": "1"}, "OPP_CI_GITHUB_APP_PRIVATE_KEY"),
        ({"OPP_CI_GITHUB_TOKEN_FILE": "/nonexistent/token"}, "OPP_CI_GITHUB_TOKEN_FILE"),
    ],
)
def test_bad_values_name_the_variable(env, variable):
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert info.value.variable == variable
    assert str(info.value).startswith(variable)


def test_non_rsa_key_is_refused():
    key = pem(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(ConfigError, match="not an RSA key"):
        load_settings({"OPP_CI_GITHUB_APP_ID": "1", "OPP_CI_GITHUB_APP_PRIVATE_KEY": key})


def test_generated_webhook_secret_is_private_and_stable(tmp_path, caplog):
    settings = Settings(var_dir=tmp_path / "var")
    caplog.set_level("INFO")
    first = ensure_webhook_secret(settings)
    path = tmp_path / "var" / "webhook_secret"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert first.webhook_secret and len(first.webhook_secret) >= 32
    assert str(path) in caplog.text
    assert first.webhook_secret not in caplog.text
    assert ensure_webhook_secret(settings).webhook_secret == first.webhook_secret


def test_serve_refuses_bad_config_with_one_line_and_exit_2(tmp_path):
    env = {**os.environ, "HOME": str(tmp_path), "OPP_CI_PUBLIC_URL": "nope"}
    result = subprocess.run(
        [sys.executable, "-m", "opp_ci_app", "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["opp_ci: error: OPP_CI_PUBLIC_URL: not an http(s) URL: 'nope'"]


def test_serve_refuses_malformed_urls_with_one_line_and_exit_2(tmp_path):
    for variable, value, line in [
        ("OPP_CI_GITHUB_BASE_URL", "http://[::1", "OPP_CI_GITHUB_BASE_URL: not a URL (Invalid IPv6 URL): 'http://[::1'"),
        ("OPP_CI_DATABASE_URL", "postgresql+asyncpg://x@[::1/db", "OPP_CI_DATABASE_URL: not a database URL"),
    ]:
        env = {**os.environ, "HOME": str(tmp_path), variable: value}
        result = subprocess.run(
            [sys.executable, "-m", "opp_ci_app", "serve"], env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().splitlines() == [f"opp_ci: error: {line}"]
