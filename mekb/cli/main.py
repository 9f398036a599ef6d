"""Entry point of the `mekb` command."""

from __future__ import annotations

import sys

import typer
from typer.exceptions import TyperException

from mekb import __version__
from mekb.cli import backfill as backfill_cli
from mekb.cli import broker, config, link, linker, monitor, produce, sample, topics, up, worker
from mekb.cli import dlq as dlq_cli
from mekb.cli import evaluate as evaluate_cli
from mekb.cli import export_onnx as export_onnx_cli
from mekb.cli import kg as kg_cli
from mekb.cli import models as models_cli
from mekb.cli import serve as serve_cli
from mekb.cli import status as status_cli
from mekb.cli import train as train_cli
from mekb.cli import trainer as trainer_cli
from mekb.cli import users as users_cli
from mekb.cli.common import CliError

app = typer.Typer(
    name="mekb",
    help=(
        "MeKB-Stream: streaming personal knowledge graphs and EmbedMe user embeddings "
        "for cross-domain recommendation.\n\n"
        "Configuration comes from MEKB_* environment variables (`mekb config` lists them "
        "all); flags override them."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command()(up.up)
app.command()(status_cli.status)
app.command()(broker.broker)
app.add_typer(topics.app, name="topics")
app.command()(produce.produce)
app.command()(backfill_cli.backfill)
app.add_typer(dlq_cli.app, name="dlq")
app.command()(sample.sample)
app.command()(config.config)
app.command()(monitor.monitor)
app.command()(link.link)
app.add_typer(linker.app, name="linker")
app.add_typer(kg_cli.app, name="kg")
app.command()(worker.worker)
app.add_typer(models_cli.app, name="models")
app.add_typer(users_cli.app, name="users")
app.command()(trainer_cli.trainer)
app.command()(serve_cli.serve)
app.command()(train_cli.train)
app.command()(evaluate_cli.evaluate)
app.command(name="export-onnx")(export_onnx_cli.export_onnx)


def _print_version(value: bool) -> None:
    # Eager, so it runs before click insists on a subcommand.
    if value:
        typer.echo(f"mekb {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    log_level: str = typer.Option(
        None, "--log-level", envvar="MEKB_LOG_LEVEL", help="DEBUG, INFO, WARNING or ERROR."
    ),
    log_json: bool = typer.Option(
        None, "--log-json/--no-log-json", envvar="MEKB_LOG_JSON", help="JSON log lines."
    ),
    version: bool = typer.Option(
        False, "--version", is_eager=True, callback=_print_version,
        help="Print the version and exit.",
    ),
) -> None:
    from mekb.logs import configure_logging

    level = (log_level or "INFO").upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise CliError(f"--log-level must be DEBUG, INFO, WARNING or ERROR, not {log_level!r}")
    configure_logging(level, bool(log_json))


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors the user can act on: printed as one line instead of a traceback."""
    from pydantic import ValidationError

    from kg.graph import KGError
    from linker.errors import LinkerError
    from mekb.backfill import BackfillError
    from mekb.broker import BrokerError
    from mekb.kafka_config import BrokerNotFound
    from mekb.produce import ProduceError
    from mekb.sample import SampleUnavailable
    from mekb.supervisor import ComponentFailed

    return (
        CliError, BrokerError, BrokerNotFound, SampleUnavailable, LinkerError, ValidationError,
        ComponentFailed, ProduceError, BackfillError, OSError, KGError,
    )


def main(argv: list[str] | None = None) -> int:
    command = typer.main.get_command(app)
    try:
        # Without standalone mode click returns the code of a `typer.Exit(code)` raised
        # by a command instead of raising it; commands themselves return None.
        code = command.main(args=argv, prog_name="mekb", standalone_mode=False)
        if isinstance(code, int):
            return code
    except typer.Exit as exc:
        return int(exc.exit_code)
    except TyperException as exc:  # usage errors: bad or missing arguments and options
        ctx = getattr(exc, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        text = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        print(f"mekb: error: {text}{hint}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 2))
    except (typer.Abort, KeyboardInterrupt):
        print("mekb: interrupted", file=sys.stderr)
        return 130
    except _user_errors() as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if hasattr(exc, "errors") and callable(exc.errors):  # pydantic: name the setting
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err["loc"])
            message = f"invalid setting MEKB_{loc.upper()}: {err['msg']}"
        print(f"mekb: error: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
