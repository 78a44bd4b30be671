"""The `ckq` command line. Each command group lives in its own module and is registered here."""

from __future__ import annotations

import typer

from queue_controller import __version__

app = typer.Typer(
    name="ckq",
    help="Checkpoint-aware batch queue controller for Kubernetes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def version() -> None:
    """Print the ckq version."""
    typer.echo(__version__)


def _register() -> None:
    # Imported here so `ckq version` stays fast and one broken group cannot hide the others' help.
    from queue_controller.cli import agent, controller, crds, criu, demo, dev, simulate, user

    app.add_typer(dev.app, name="dev")
    app.add_typer(criu.app, name="criu")
    app.command(name="crds")(crds.crds)
    app.command(name="demo")(demo.demo)
    app.command(name="simulate")(simulate.simulate)
    app.command(name="controller")(controller.controller)
    app.command(name="agent")(agent.agent)
    user.register(app)  # get, describe, pending, suspend, resume, checkpoint, top (also `kubectl ckq`)


_register()


def main() -> None:
    app()
