"""The command line: help, configuration sources and precedence, errors that say where and how to fix."""

from __future__ import annotations

import itertools
import socket
import subprocess
import sys
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from meshtrace.cli import app, build
from meshtrace.config import build_config, load_yaml, resolve_tokens
from meshtrace.errors import ConfigError

runner = CliRunner()


def test_help_explains_every_option_and_exit_codes():
    result = runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for text in ("--grpc", "--otlp-http", "--token", "--no-auth", "--retention", "MESHTRACE_GRPC", "Exit codes"):
        assert text in result.output


def _commands(command: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command's path under ``command`` (a group has ``commands``)."""
    found = [path] if path else []
    for name, sub in getattr(command, "commands", {}).items():
        found += _commands(sub, (*path, name))
    return found


def test_help_paragraphs_fill_the_terminal_width():
    """A docstring's own line breaks are not kept in --help: on an 80-column terminal they broke lines a
    second time ("... (a ClickHouse server that did" / "not answer ..."); each paragraph fills its lines."""
    cli = build()
    paths = _commands(typer.main.get_command(cli))
    expected = {("serve",), ("collector",), ("up",), ("doctor",), ("rollout", "restart"), ("schema", "status")}
    assert expected <= set(paths)
    short = []
    for path in paths:
        result = runner.invoke(cli, [*path, "--help"], env={"COLUMNS": "80"})
        assert result.exit_code == 0, path
        lines = result.output.splitlines()
        start = next(i for i, line in enumerate(lines) if line.strip().startswith("Usage:")) + 1
        end = next((i for i, line in enumerate(lines) if line.startswith("╭")), len(lines))
        paragraphs = "\n".join(line.strip() for line in lines[start:end]).strip().split("\n\n")
        for paragraph in paragraphs:
            rows = paragraph.splitlines()
            for line, after in itertools.pairwise(rows):  # the next line's first word would have fit
                if len(line) + 1 + len(after.split()[0]) <= 76:
                    short.append((" ".join(path), line))
    assert not short


def test_version():
    result = runner.invoke(app, ["version"])
    assert result.exit_code == 0
    assert result.output.strip() == "0.1.0"


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["--retention", "soon"], {}, "--retention"),
        (["--grpc", "nowhere"], {}, "--grpc: 'nowhere' is not host:port"),
        ([], {"MESHTRACE_MAX_BODY": "huge"}, "MESHTRACE_MAX_BODY"),
        (["--token", "missing-equals"], {}, "--token"),
        (["--token", "bad tenant=x"], {}, "tenant name 'bad tenant' is not allowed"),
        (["--store", "postgres://db"], {}, "unknown store URL scheme"),
        (["--token", "a=b", "--admin-tenant", "nobody"], {}, "admin tenant 'nobody' has no token"),
    ],
)
def test_bad_settings_exit_2_and_name_the_source(args, env, says, tmp_path):
    result = runner.invoke(app, ["serve", "--data", str(tmp_path), *args], env={"COLUMNS": "200", **env})
    assert result.exit_code == 2, result.output
    assert says in result.output
    assert "fix:" in result.output


def test_yaml_errors_name_the_file_and_path(tmp_path):
    bad = tmp_path / "serve.yaml"
    bad.write_text("grpc: 0.0.0.0:4317\nretention: forever\n")
    result = runner.invoke(app, ["serve", "--config", str(bad)], env={"COLUMNS": "300"})
    assert result.exit_code == 2
    assert f"{bad}: retention" in result.output
    bad.write_text("grpc: [unclosed\n")
    result = runner.invoke(app, ["serve", "--config", str(bad)], env={"COLUMNS": "300"})
    assert result.exit_code == 2
    assert "line 2" in result.output
    bad.write_text("grcp: 0.0.0.0:4317\n")
    result = runner.invoke(app, ["serve", "--config", str(bad)], env={"COLUMNS": "300"})
    assert "unknown setting 'grcp'" in result.output


def test_flags_beat_environment_beats_file(tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text("retention: 2d\nhttp: 127.0.0.1:1\ntokens: {acme: [a1, a2], beta: b1}\n")
    config = build_config(load_yaml(str(path)), str(path), {"http": ("127.0.0.1:2", "MESHTRACE_HTTP")})
    assert config.retention_s == 2 * 86400
    assert config.http == "127.0.0.1:2"
    assert config.tokens == {"acme": ["a1", "a2"], "beta": ["b1"]}
    assert resolve_tokens(config)[0] == {"a1": "acme", "a2": "acme", "b1": "beta"}


def test_a_token_for_two_tenants_is_refused():
    config = build_config({"tokens": {"acme": "same", "beta": "same"}}, "x.yaml", {})
    with pytest.raises(ConfigError, match="both tenant"):
        resolve_tokens(config)


def test_a_token_is_generated_once_and_kept(tmp_path):
    config = build_config({"data": str(tmp_path)}, None, {})
    tokens, announced = resolve_tokens(config)
    assert announced
    assert tokens == {announced: "default"}
    assert (tmp_path / "tokens.yaml").stat().st_mode & 0o777 == 0o600
    assert resolve_tokens(config) == (tokens, announced)
    assert resolve_tokens(build_config({"data": str(tmp_path), "no_auth": True}, None, {}))[1] is None


def test_a_busy_port_is_a_configuration_error(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "meshtrace",
                "serve",
                "--data",
                str(tmp_path),
                "--no-auth",
                "--grpc",
                "127.0.0.1:0",
                "--otlp-http",
                f"127.0.0.1:{port}",
                "--http",
                "127.0.0.1:0",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env={"COLUMNS": "200", "PATH": ""},
        )
    assert result.returncode == 2, result.stderr
    assert f"cannot listen on 127.0.0.1:{port} for otlp_http" in result.stderr


def test_tokens_file_merges_with_flags_and_reports_errors_by_file(tmp_path):
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text("acme: [t1, t2]\nbeta: t3\n")
    config = build_config({"tokens_file": str(tokens)}, None, {"tokens": ({"gamma": ["t4"]}, "--token")})
    assert resolve_tokens(config)[0] == {"t1": "acme", "t2": "acme", "t3": "beta", "t4": "gamma"}
    tokens.write_text("acme: []\n")
    with pytest.raises(ConfigError) as caught:
        resolve_tokens(build_config({"tokens_file": str(tokens)}, None, {}))
    assert str(tokens) in str(caught.value)
    assert "non-empty token" in str(caught.value)
