"""The CLI answers bad input with one line on stderr, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mekb.cli.main", *args],
        capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "MEKB_DATA_DIR": "/nonexistent-mekb"},
    )


def test_free_ports_are_never_handed_out_twice() -> None:
    from mekb.broker import free_port

    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)


def test_help_lists_every_command() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("up", "broker", "topics", "produce", "sample", "config", "worker",
                    "trainer", "serve", "monitor", "models", "link", "linker", "train",
                    "evaluate", "export-onnx"):
        assert command in result.stdout


def test_version_needs_no_command() -> None:
    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("mekb ")


def test_exit_code_of_a_command_reaches_the_shell() -> None:
    """`typer.Exit(code)` inside a command must not turn into exit status 0."""
    from mekb.cli import main as cli

    @cli.app.command("exit-with-code-for-test", hidden=True)
    def _exit() -> None:
        import typer

        raise typer.Exit(7)

    try:
        assert cli.main(["exit-with-code-for-test"]) == 7
    finally:
        cli.app.registered_commands.pop()


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (("produce",), 2, "Missing argument"),
        (("broker", "--port", "abc"), 2, "--port"),
        (("broker", "--port", "70000"), 2, "--port"),
        (("nosuch",), 2, "No such command"),
        (("produce", "/no/such/file.jsonl"), 1, "no such file"),
        (("produce", "x", "--type", "bogus"), 1, "--type"),
        (("--log-level", "LOUD", "config"), 1, "--log-level"),
        (("topics", "create"), 1, "no broker"),
        (("up", "--once", "--serving-port", "45123", "--monitor-port", "45123"), 1,
         "serving and monitor on 45123"),
    ],
)
def test_bad_arguments_get_one_line(args: tuple[str, ...], code: int, needle: str) -> None:
    result = run_cli(*args)
    assert result.returncode == code
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mekb: error:")
    assert needle in lines[0]


def test_invalid_environment_setting_is_named() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mekb.cli.main", "config"],
        capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "MEKB_PARTITIONS": "zero"},
    )
    assert result.returncode == 1
    assert "MEKB_PARTITIONS" in result.stderr and "Traceback" not in result.stderr


def test_config_masks_secrets() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mekb.cli.main", "config"],
        capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "MEKB_SASL_PASSWORD": "hunter2"},
    )
    assert result.returncode == 0
    assert "hunter2" not in result.stdout
    assert "MEKB_SASL_PASSWORD" in result.stdout


def test_up_gives_the_demo_a_short_publish_interval_unless_configured(tmp_path) -> None:
    from mekb.cli.up import component_env
    from mekb.settings import Settings

    env = component_env("127.0.0.1:9", tmp_path, {})
    assert env["MEKB_BOOTSTRAP_SERVERS"] == "127.0.0.1:9"
    assert Settings(**{"trainer_publish_interval_s": env["MEKB_TRAINER_PUBLISH_INTERVAL_S"]}
                    ).trainer_publish_interval_s == 60.0
    own = component_env("127.0.0.1:9", tmp_path, {"MEKB_TRAINER_PUBLISH_INTERVAL_S": "5"})
    assert "MEKB_TRAINER_PUBLISH_INTERVAL_S" not in own  # the user's value reaches the child
