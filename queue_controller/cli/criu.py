"""`ckq criu`: provision a working CRIU (>= 4.0) and check that it can run here."""

from __future__ import annotations

import typer

from queue_controller.runtime import criu_install
from queue_controller.runtime.errors import RuntimeFailure

app = typer.Typer(help="Provision and check CRIU.", no_args_is_help=True)


@app.command()
def install(force: bool = typer.Option(False, "--force", help="download and unpack again")) -> None:
    """Install CRIU from Debian's archive into the ckq cache and print the executable's path."""
    try:
        info = criu_install.install(force=force, log=False)
    except RuntimeFailure as exc:
        typer.echo(f"ckq criu install: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(info.path)


@app.command()
def check() -> None:
    """Find the CRIU ckq-run would use and run `criu check` with it."""
    from queue_controller.runtime.criu import Criu

    try:
        criu = Criu.locate()
    except RuntimeFailure as exc:
        typer.echo(f"ckq criu check: {exc}", err=True)
        raise typer.Exit(1) from None
    tracking = "available" if criu.dirty_tracking else "unavailable (incremental dumps compare pages)"
    typer.echo(f"{criu.path}: CRIU {criu.version}, `criu check` passed; memory dirty tracking {tracking}")
