"""Configuration layers: defaults < JSON file < environment < flags, one clear line on error."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fastext.config import Config, load, option_table, parse_bind
from fastext.errors import ConfigError

# portable: parsing settings (the ARM64 stage leaves it to the native run).
pytestmark = pytest.mark.portable


def test_config_defaults():
    cfg = load({}, {})
    assert cfg == Config()
    assert cfg.bind == "tcp://0.0.0.0:5001" and cfg.address == "0.0.0.0:5001"
    assert cfg.batch_size == 1 and cfg.max_message_mb >= 64


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tcp://0.0.0.0:5001", ("0.0.0.0", 5001)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("localhost:6000", ("localhost", 6000)),
        ("tcp://[::1]:7000", ("::1", 7000)),
    ],
)
def test_parse_bind_forms(text, expected):
    assert parse_bind(text) == expected


@pytest.mark.parametrize(
    "text", ["5001", "tcp://host", "unix:///tmp/x:1", "h:70000", "h:port", ":5"]
)
def test_parse_bind_rejects(text):
    with pytest.raises(ConfigError):
        parse_bind(text)


def test_config_layers_precedence(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(
        json.dumps(
            {"grpcBinding": "tcp://127.0.0.1:7001", "batchSize": 4, "workers": 3, "max_inflight": 9}
        )
    )
    env = {"FASTEXT_BATCH_SIZE": "5", "FASTEXT_WORKERS": "2"}
    cfg = load({"workers": "1"}, env, str(path))
    assert cfg.bind == "tcp://127.0.0.1:7001"  # file
    assert cfg.max_inflight == 9  # file
    assert cfg.batch_size == 5  # env over file
    assert cfg.workers == 1  # flag over env


def test_config_seed_names_in_environment():
    cfg = load({}, {"grpcBinding": "tcp://127.0.0.1:9", "batchSize": "3"})
    assert (cfg.bind, cfg.batch_size) == ("tcp://127.0.0.1:9", 3)
    cfg = load({}, {"grpcBinding": "tcp://127.0.0.1:9", "FASTEXT_BIND": "127.0.0.1:8"})
    assert cfg.bind == "127.0.0.1:8"  # fastext's own name wins


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"FASTEXT_BATCH_SIZE": "0"}, "FASTEXT_BATCH_SIZE"),
        ({"FASTEXT_WORKERS": "many"}, "FASTEXT_WORKERS"),
        ({"FASTEXT_BIND": "nowhere"}, "FASTEXT_BIND"),
        ({"FASTEXT_LOG_LEVEL": "LOUD"}, "FASTEXT_LOG_LEVEL"),
    ],
)
def test_config_bad_environment_names_the_variable(env, needle):
    with pytest.raises(ConfigError, match=needle):
        load({}, env)


def test_config_file_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load({}, {}, str(bad))
    unknown = tmp_path / "unknown.json"
    unknown.write_text('{"batchsize": 2}')
    with pytest.raises(ConfigError, match="unknown key 'batchsize'"):
        load({}, {}, str(unknown))
    with pytest.raises(ConfigError, match="missing.json"):
        load({}, {}, str(tmp_path / "missing.json"))


def test_option_table_covers_every_field():
    flags = {row[0] for row in option_table()} - {""}
    fields = {f.replace("_", "-") for f in Config.__dataclass_fields__} - {"auth-password"}
    # the password is environment-only; a flag per model: --model NAME=PATH, repeated
    assert {f"--{f}" for f in fields} - {"--models"} | {"--model"} == flags


def test_readme_documents_every_flag_and_variable():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for flag, env, _, _ in option_table():
        assert env in readme, env
        if flag:
            assert f"`{flag}`" in readme, flag


def test_secrets_and_pairs(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("hunter2\n")
    cfg = load({"auth_username": "lva", "auth_password_file": str(secret)}, {})
    assert cfg.auth_password == "hunter2"
    assert "hunter2" not in repr(cfg)
    with pytest.raises(ConfigError, match="no password"):
        load({"auth_username": "lva"}, {})
    with pytest.raises(ConfigError, match="no user name"):
        load({}, {"FASTEXT_AUTH_PASSWORD": "x"})
    with pytest.raises(ConfigError, match="go together"):
        load({"tls_cert": "c.pem"}, {})
    with pytest.raises(ConfigError, match="auth-password-file"):
        load({"auth_username": "lva", "auth_password_file": str(tmp_path / "none")}, {})


def test_cli_bad_configuration_exits_with_one_line():
    proc = subprocess.run(
        [sys.executable, "-m", "fastext", "serve", "--batch-size", "zero"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--batch-size" in lines[0] and "zero" in lines[0]


def test_cli_taken_port_exits_with_one_line():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "fastext", "serve", "--bind", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr.strip().splitlines()[-1]


def test_metrics_host_takes_an_address_or_a_name_without_a_port():
    assert load({}, {}).metrics_host == "0.0.0.0"
    assert load({}, {"FASTEXT_METRICS_HOST": "127.0.0.1"}).metrics_host == "127.0.0.1"
    assert load({"metrics_host": "[::1]"}, {}).metrics_host == "::1"
    assert load({"metrics_host": "metrics.local"}, {}).metrics_host == "metrics.local"
    for bad in ("127.0.0.1:9100", "", "http://x", "a b"):
        with pytest.raises(ConfigError, match="metrics_host|address|host"):
            load({"metrics_host": bad}, {})
