"""`mekb export-onnx`: a trained EmbedMe folder → model bundle (ONNX user tower,
tokenizer, item embeddings), optionally published into the model registry."""

from __future__ import annotations

from pathlib import Path

import typer

from mekb.cli.common import CliError


def export_onnx(
    model: Path = typer.Argument(..., help="EmbedMe folder (`mekb train --out X` → X/model)."),
    out: Path = typer.Option(..., "--out", help="Bundle folder to write."),
    version: str = typer.Option(None, "--version", help="Version id (default: new)."),
    publish: bool = typer.Option(False, "--publish", help="Publish into "
                                 "$MEKB_DATA_DIR/registry and activate it."),
    check: bool = typer.Option(True, "--check/--no-check", help="Compare ONNX Runtime "
                               "with PyTorch on sample inputs (max abs diff)."),
) -> None:
    """Export the user tower to ONNX (dynamic batch/sequence) and write the bundle."""
    from mekb.registry import new_version_id
    from trainer.export import write_bundle
    from trainer.model import EmbedMe, ModelError

    try:
        m = EmbedMe.load(model)
    except ModelError as exc:
        raise CliError(str(exc)) from None
    vid = version or new_version_id()
    bundle = write_bundle(m, out, version=vid)
    typer.echo(f"bundle {vid} written to {bundle}")
    if check:
        from trainer.export import parity

        typer.echo(f"ONNX vs PyTorch max abs diff: {parity(m, bundle / 'user_tower.onnx'):.2e}")
    if publish:
        from mekb.cli.common import settings_with
        from mekb.registry import Registry

        reg = Registry(settings_with().data_dir / "registry")
        v = reg.publish(bundle, activate=True)
        typer.echo(f"published and activated {v.version} in {v.path}")
