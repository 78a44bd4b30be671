"""`ckq dev`: the local control plane (issue 3). Placeholder until that lands."""

import typer

app = typer.Typer(help="A local real Kubernetes control plane with kwok GPU nodes.", no_args_is_help=True)
