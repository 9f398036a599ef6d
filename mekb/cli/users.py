"""`mekb users delete ID...`: erase users (publishes `delete_user` records)."""

from __future__ import annotations

from pathlib import Path

import typer

from mekb.cli.common import CliError, require_broker, settings_with

app = typer.Typer(help="Act on users' state (erasure).", no_args_is_help=True)


@app.command("delete")
def delete(
    user_ids: list[str] = typer.Argument(None, help="User ids to erase."),
    file: Path = typer.Option(
        None, "--file", "-f", help="Also erase the ids in this file (one per line)."
    ),
) -> None:
    """Publish a delete_user record per user to `interactions` (keyed by the user, so
    it is applied in order with the user's events). The stream worker removes the
    user's MeKB (df and N included), serving forgets it, the trainer drops its queued
    examples; an event of the user produced later starts a new MeKB. Idempotent."""
    import asyncio

    from pydantic import ValidationError

    from mekb.erasure import Published, UserDeleter, delete_event

    ids = list(user_ids or [])
    if file is not None:
        if not file.is_file():
            raise CliError(f"no such file: {file}")
        ids += [line.strip() for line in file.read_text("utf-8").splitlines() if line.strip()]
    if not ids:
        raise CliError("no user ids given (arguments or --file)")
    for user_id in ids:  # refuse the whole request before anything is sent
        try:
            delete_event(user_id)
        except ValidationError as exc:
            raise CliError(f"user id {user_id!r}: {exc.errors()[0]['msg']}") from None
    settings = settings_with()
    require_broker(settings)

    async def run() -> list[Published]:
        deleter = UserDeleter(settings)
        try:
            return await deleter.delete(ids)
        finally:
            await deleter.close()

    topic = settings.topic("interactions")
    for p in asyncio.run(run()):
        typer.echo(f"delete_user {p.user_id}: {topic} partition {p.partition} offset {p.offset}")
    typer.echo(f"published {len(ids)} deletion(s)")
