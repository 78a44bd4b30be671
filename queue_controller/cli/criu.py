"""`ckq criu`: provision a working CRIU (issue 5). Placeholder until that lands."""

import typer

app = typer.Typer(help="Provision and check CRIU.", no_args_is_help=True)
