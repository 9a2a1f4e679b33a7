"""One configuration object for the server, built from layers.

Precedence, lowest first: built-in defaults < ``--config`` JSON file <
``FASTEXT_*`` environment variables < command-line flags.  Each option is
declared exactly once, in :data:`OPTIONS`; the command line, the environment
names, the JSON keys and the README table all come from that declaration.

This is the only module of fastext that reads ``os.environ``.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from fastext.errors import ConfigError
from fastext.malloc import KEEP_MB

__all__ = ["Config", "ModelSpec", "OPTIONS", "Option", "add_arguments", "load", "parse_bind"]

_MODEL_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")


def parse_bind(text: str) -> tuple[str, int]:
    """Split ``tcp://host:port``, ``host:port`` or ``[v6]:port`` into (host, port)."""
    raw = text.strip()
    if raw.startswith("tcp://"):
        raw = raw[len("tcp://") :]
    elif "://" in raw:
        raise ConfigError(f"bind address {text!r}: only tcp:// is supported")
    host, sep, port_text = raw.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"bind address {text!r}: expected host:port or tcp://host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"bind address {text!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"bind address {text!r}: port must be 0..65535")
    return host, port


def _bind(text: str) -> str:
    parse_bind(text)
    return text.strip()


def _int_in(low: int, high: int | None = None) -> Callable[[str], int]:
    def convert(text: str) -> int:
        try:
            value = int(str(text).strip())
        except ValueError:
            raise ConfigError(f"expected a whole number, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"{low}..{high}" if high is not None else f">= {low}"
            raise ConfigError(f"must be {bound}, got {value}")
        return value

    return convert


def _float_in(low: float, high: float) -> Callable[[str], float]:
    def convert(text: str) -> float:
        try:
            value = float(str(text).strip())
        except ValueError:
            raise ConfigError(f"expected a number, got {text!r}") from None
        if not low <= value <= high:
            raise ConfigError(f"must be within {low}..{high}, got {value}")
        return value

    return convert


def _choice(*names: str) -> Callable[[str], str]:
    def convert(text: str) -> str:
        value = str(text).strip()
        if value.upper() in names:
            return value.upper()
        if value.lower() in names:
            return value.lower()
        raise ConfigError(f"must be one of {', '.join(names)}, got {text!r}")

    return convert


def _path(text: str) -> str:
    return str(text).strip()


def _text(text: str) -> str:
    return str(text)


def _host(text: str) -> str:
    """An address or a host name to listen on, without a port."""
    value = str(text).strip().strip("[]")
    if not value or any(c.isspace() or c in "/@" for c in value):
        raise ConfigError(f"expected an address or host name, got {text!r}")
    if ":" in value:  # only an IPv6 address has colons: a port does not belong here
        try:
            ipaddress.IPv6Address(value)
        except ValueError:
            raise ConfigError(
                f"{text!r} is neither an IPv6 address nor a host name "
                "(the port has an option of its own)"
            ) from None
    return value


@dataclass(frozen=True)
class ModelSpec:
    """A model the operator names: ``NAME=PATH`` and its settings (from ``--config``).

    Only names and paths are read here; the file itself is opened by
    :mod:`fastext.models.repository` at start, which also checks the settings.
    """

    name: str
    path: str
    settings: tuple[tuple[str, Any], ...] = ()  # (key, JSON value), sorted: hashable, picklable

    def settings_dict(self) -> dict[str, Any]:
        return dict(self.settings)


def _model_name(name: str, origin: str) -> str:
    if not _MODEL_NAME.match(name):
        raise ConfigError(
            f"{origin}: model name {name!r} must start with a letter and hold "
            "only letters, digits, '_', '.' or '-' (at most 64)"
        )
    return name


def _models(text: str) -> tuple[ModelSpec, ...]:
    """``NAME=PATH[,NAME=PATH...]`` (the environment's form; each flag gives one)."""
    specs: list[ModelSpec] = []
    for item in filter(None, (part.strip() for part in str(text).split(","))):
        name, sep, path = item.partition("=")
        if not sep or not path.strip():
            raise ConfigError(f"expected NAME=PATH.onnx, got {item!r}")
        specs.append(ModelSpec(_model_name(name.strip(), "model"), path.strip()))
    return _unique(specs)


def _unique(specs: Sequence[ModelSpec]) -> tuple[ModelSpec, ...]:
    names = [s.name for s in specs]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"model {name!r} is named twice")
    return tuple(specs)


def _models_from_file(data: Any, base: str) -> tuple[ModelSpec, ...]:
    """The ``models`` object of a ``--config`` file: ``{"NAME": "PATH"}`` or
    ``{"NAME": {"path": "PATH", ...settings}}``; a relative path is relative to the file."""
    if isinstance(data, str):
        return _models(data)
    if not isinstance(data, dict):
        raise ConfigError('expected an object of NAME: PATH or NAME: {"path": PATH, ...}')
    specs = []
    for name, value in data.items():
        settings: dict[str, Any] = {}
        if isinstance(value, dict):
            settings = dict(value)
            value = settings.pop("path", None)
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"model {name!r}: expected a path to an .onnx file")
        path = value.strip()
        if not os.path.isabs(path):
            path = os.path.join(os.path.dirname(os.path.abspath(base)), path)
        specs.append(
            ModelSpec(_model_name(str(name), "model"), path, tuple(sorted(settings.items())))
        )
    return _unique(specs)


def _name(text: str) -> str:
    value = str(text).strip()
    if not value:
        raise ConfigError("must not be empty")
    return value


@dataclass(frozen=True)
class Option:
    """One setting: its field, flag, environment twin, JSON keys and converter."""

    field: str
    flag: str
    env: str
    convert: Callable[[str], Any]
    help: str
    aliases: tuple[str, ...] = ()  # extra JSON keys and environment names (the seed's)


OPTIONS: tuple[Option, ...] = (
    Option(
        "bind",
        "--bind",
        "FASTEXT_BIND",
        _bind,
        "address to listen on: tcp://host:port or host:port",
        ("grpcBinding",),
    ),
    Option(
        "batch_size",
        "--batch-size",
        "FASTEXT_BATCH_SIZE",
        _int_in(1, 1024),
        "frames of one stream collected before the processor runs",
        ("batchSize",),
    ),
    Option(
        "batch_delay_ms",
        "--batch-delay-ms",
        "FASTEXT_BATCH_DELAY_MS",
        _float_in(0.0, 10_000.0),
        "a partial batch is processed after waiting this long (ms)",
    ),
    Option(
        "workers",
        "--workers",
        "FASTEXT_WORKERS",
        _int_in(0, 256),
        "worker processes; 0 processes frames in the server process",
    ),
    Option(
        "max_inflight",
        "--max-inflight",
        "FASTEXT_MAX_INFLIGHT",
        _int_in(1, 65536),
        "unacknowledged frames per stream before the server stops reading it",
    ),
    Option(
        "max_message_mb",
        "--max-message-mb",
        "FASTEXT_MAX_MESSAGE_MB",
        _int_in(4, 2047),
        "largest gRPC message accepted or sent (MiB)",
    ),
    Option(
        "overload",
        "--overload",
        "FASTEXT_OVERLOAD",
        _choice("block", "drop"),
        "a stream's window full: block (stop reading it) or drop (ack new frames at once, "
        "without inference)",
    ),
    Option(
        "processor",
        "--processor",
        "FASTEXT_PROCESSOR",
        _name,
        "processor used when a session does not choose one",
    ),
    Option(
        "models",
        "--model",
        "FASTEXT_MODELS",
        _models,
        "a model this server serves, NAME=PATH.onnx (a flag per model; in the environment "
        'NAME=PATH,NAME=PATH); a session selects it with {"model": "NAME"}',
    ),
    Option(
        "model_threads",
        "--model-threads",
        "FASTEXT_MODEL_THREADS",
        _int_in(1, 256),
        "ONNX Runtime threads per model in each worker",
    ),
    Option(
        "drain_s",
        "--drain-s",
        "FASTEXT_DRAIN_S",
        _float_in(0.0, 3600.0),
        "on SIGTERM, seconds allowed for in-flight frames to finish",
    ),
    Option(
        "shm_size_mb",
        "--shm-size-mb",
        "FASTEXT_SHM_SIZE_MB",
        _int_in(1, 65536),
        "server-owned shared memory that embedded frames are copied into for workers (MiB)",
    ),
    Option(
        "malloc_keep_mb",
        "--malloc-keep-mb",
        "FASTEXT_MALLOC_KEEP_MB",
        _int_in(0, 2047),
        "freed heap the server process keeps for reuse rather than returning it to the "
        "kernel after each large message (MiB; glibc; 0: the C library's defaults)",
    ),
    Option(
        "auth_username",
        "--auth-username",
        "FASTEXT_AUTH_USERNAME",
        _text,
        "require x-ms-authentication Basic credentials with this user name",
    ),
    Option(
        "auth_password",
        "",
        "FASTEXT_AUTH_PASSWORD",
        _text,
        "the password (environment only: never on a command line)",
    ),
    Option(
        "auth_password_file",
        "--auth-password-file",
        "FASTEXT_AUTH_PASSWORD_FILE",
        _path,
        "file holding the password (first line)",
    ),
    Option(
        "tls_cert", "--tls-cert", "FASTEXT_TLS_CERT", _path, "server certificate (PEM): serve TLS"
    ),
    Option("tls_key", "--tls-key", "FASTEXT_TLS_KEY", _path, "server private key (PEM)"),
    Option(
        "tls_client_ca",
        "--tls-client-ca",
        "FASTEXT_TLS_CLIENT_CA",
        _path,
        "CA bundle (PEM): require client certificates signed by it (mutual TLS)",
    ),
    Option(
        "metrics_port",
        "--metrics-port",
        "FASTEXT_METRICS_PORT",
        _int_in(0, 65535),
        "serve Prometheus metrics on this port (0: off)",
    ),
    Option(
        "metrics_host",
        "--metrics-host",
        "FASTEXT_METRICS_HOST",
        _host,
        "the address the metrics port listens on (127.0.0.1: this host only; "
        "0.0.0.0 lets a Prometheus in another container scrape it)",
    ),
    Option(
        "health_port",
        "--health-port",
        "FASTEXT_HEALTH_PORT",
        _int_in(0, 65535),
        "also answer grpc.health.v1 (and nothing else) in plaintext on this port, whatever "
        "TLS the main port requires, for container health checks and probes (0: off)",
    ),
    Option(
        "health_host",
        "--health-host",
        "FASTEXT_HEALTH_HOST",
        _host,
        "the address the health port listens on (127.0.0.1: checks from inside the "
        "container or pod only; 0.0.0.0 for a Kubernetes grpc probe)",
    ),
    Option(
        "instance",
        "--instance",
        "FASTEXT_INSTANCE",
        _text,
        "this instance's name, sent in every call's initial metadata as x-fastext-instance "
        "(empty: host:pid), so clients behind a proxy can tell instances apart",
    ),
    Option(
        "log_level",
        "--log-level",
        "FASTEXT_LOG_LEVEL",
        _choice("DEBUG", "INFO", "WARNING", "ERROR"),
        "logging level",
    ),
    Option(
        "log_format",
        "--log-format",
        "FASTEXT_LOG_FORMAT",
        _choice("text", "json"),
        "log lines as readable text or one JSON object per line",
    ),
)


Overload = Literal["block", "drop"]  # a stream's window full: stop reading it, or ack at once
LogFormat = Literal["text", "json"]


@dataclass(frozen=True)
class Config:
    """Everything the server and its workers are configured with (picklable)."""

    bind: str = "tcp://0.0.0.0:5001"
    batch_size: int = 1
    batch_delay_ms: float = 5.0
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    max_inflight: int = 64
    max_message_mb: int = 256
    overload: Overload = "block"
    processor: str = "brightness"
    models: tuple[ModelSpec, ...] = ()
    model_threads: int = 1
    drain_s: float = 10.0
    shm_size_mb: int = 64
    malloc_keep_mb: int = KEEP_MB
    auth_username: str = ""
    auth_password: str = field(default="", repr=False)  # never printed, never logged
    auth_password_file: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    metrics_port: int = 0
    metrics_host: str = "0.0.0.0"
    health_port: int = 0
    health_host: str = "127.0.0.1"
    instance: str = ""  # empty: host:pid, resolved by the server process itself
    log_level: str = "INFO"
    log_format: LogFormat = "text"

    @property
    def address(self) -> str:
        """The bind address in the form grpc's ``add_insecure_port`` takes."""
        host, port = parse_bind(self.bind)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every option as a flag (default None, so unset flags do not override)."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="JSON file with settings (fastext's option names or the seed's grpcBinding/batchSize)",
    )
    for opt in OPTIONS:
        if opt.field == "models":  # one flag per model
            parser.add_argument(
                opt.flag,
                dest=opt.field,
                default=None,
                action="append",
                metavar="NAME=PATH",
                help=f"{opt.help} [env {opt.env}]",
            )
        elif opt.flag:  # environment-only options (secrets) have no flag
            parser.add_argument(
                opt.flag,
                dest=opt.field,
                default=None,
                metavar=opt.field.upper(),
                help=f"{opt.help} [env {opt.env}]",
            )


def _apply(values: dict[str, Any], opt: Option, raw: Any, origin: str) -> None:
    if isinstance(raw, list | tuple):  # a repeated flag (--model)
        raw = ",".join(map(str, raw))
    try:
        values[opt.field] = opt.convert(str(raw))
    except ConfigError as exc:
        raise ConfigError(f"{origin}: {exc}") from None


def _read_file(path: str) -> Mapping[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except OSError as exc:
        raise ConfigError(f"--config {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"--config {path}: not valid JSON ({exc.msg} at line {exc.lineno})"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a JSON object")
    known = {o.field for o in OPTIONS} | {a for o in OPTIONS for a in o.aliases}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"--config {path}: unknown key {unknown[0]!r}")
    return data


def load(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: str | None = None,
) -> Config:
    """Build a :class:`Config` from defaults < file < environment < flags.

    ``flags`` maps option fields to values (None = not given); ``environ``
    defaults to ``os.environ``.  Raises :class:`ConfigError` with one line.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    if config_file:
        data = _read_file(config_file)
        for opt in OPTIONS:
            for key in (*opt.aliases, opt.field):  # fastext's own name wins over the seed's
                if key == "models" and data.get(key) is not None:
                    try:
                        values[key] = _models_from_file(data[key], config_file)
                    except ConfigError as exc:
                        raise ConfigError(f"--config {config_file}: models: {exc}") from None
                elif key in data and data[key] is not None:
                    _apply(values, opt, data[key], f"--config {config_file}: {key}")
    for opt in OPTIONS:
        for name in (*opt.aliases, opt.env):
            if env.get(name, "").strip():
                _apply(values, opt, env[name], name)
    for opt in OPTIONS:
        if flags and opt.flag and flags.get(opt.field) is not None:
            _apply(values, opt, flags[opt.field], opt.flag)
    return _checked(Config(**values))


def _checked(config: Config) -> Config:
    """Settings that only make sense together."""
    if config.auth_password_file and not config.auth_password:
        try:
            with open(config.auth_password_file, encoding="utf-8") as fh:
                password = fh.readline().rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(
                f"--auth-password-file {config.auth_password_file}: {exc.strerror or exc}"
            ) from None
        config = config.replace(auth_password=password)
    if config.auth_username and not config.auth_password:
        raise ConfigError(
            "FASTEXT_AUTH_USERNAME is set but no password: set "
            "FASTEXT_AUTH_PASSWORD or --auth-password-file"
        )
    if config.auth_password and not config.auth_username:
        raise ConfigError("a password is set but no user name: set FASTEXT_AUTH_USERNAME")
    if bool(config.tls_cert) != bool(config.tls_key):
        raise ConfigError("--tls-cert and --tls-key go together")
    if config.tls_client_ca and not config.tls_cert:
        raise ConfigError("--tls-client-ca needs --tls-cert and --tls-key")
    if config.health_port and config.health_port == parse_bind(config.bind)[1]:
        raise ConfigError(
            f"--health-port {config.health_port} is the --bind port: the health "
            "port is a second listener, give it a port of its own"
        )
    return config


def from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Config:
    """The :class:`Config` for parsed command-line arguments."""
    return load(vars(args), environ, getattr(args, "config", None))


def option_table() -> Sequence[tuple[str, str, str, str]]:
    """(flag, environment, default, help) rows, for the README and ``--help``."""
    defaults = Config()
    shown = {"models": "none"}
    return [
        (o.flag, o.env, shown.get(o.field, str(getattr(defaults, o.field))), o.help)
        for o in OPTIONS
    ]


def read_file(path: str, what: str) -> bytes:
    """A file the configuration names (certificates, keys), or a ConfigError naming it."""
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise ConfigError(f"{what} {path}: {exc.strerror or exc}") from None
