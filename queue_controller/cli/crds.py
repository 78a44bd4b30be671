"""`ckq crds`: write crds/*.yaml generated from the pydantic API models (or check they are current)."""

from __future__ import annotations

import difflib
from pathlib import Path

import typer


def crds(
    out: Path = typer.Option(Path("crds"), "--out", help="Directory to write the CRD files into."),
    chart: Path = typer.Option(
        Path("helm/ckq"), "--chart", help="The Helm chart whose templates/ gets the admission policy too "
        "(skipped when the directory does not exist)."
    ),
    check: bool = typer.Option(
        False, "--check", help="Write nothing; exit 1 with a diff summary if files differ from the models."
    ),
) -> None:
    """Write crds/*.yaml from the pydantic API models, and the admission policy (crds/ and the chart);
    and the users' ClusterRoles of queue_controller/access.py into the chart."""
    from queue_controller import access
    from queue_controller.api import admission
    from queue_controller.api.crdgen import render_all

    wanted = render_all()
    chart_files = {chart / "templates" / admission.FILENAME: wanted[admission.FILENAME],
                   chart / "templates" / access.USER_ROLES_TEMPLATE: access.render_user_roles()}
    if check:
        problems = _differences(out, wanted)
        if chart.is_dir():
            problems += [f"differs: {path}" for path, text in chart_files.items()
                         if not path.exists() or path.read_text() != text]
        for line in problems:
            typer.echo(line, err=True)
        if problems:
            typer.echo(f"{out}/ is out of date; run `ckq crds --out {out}`.", err=True)
            raise typer.Exit(1)
        typer.echo(f"{out}/ is up to date ({len(wanted) - 1} CRDs and the admission policy).")
        return
    out.mkdir(parents=True, exist_ok=True)
    for name, text in wanted.items():
        (out / name).write_text(text)
        typer.echo(str(out / name))
    if chart.is_dir():
        for path, text in chart_files.items():
            path.write_text(text)
            typer.echo(str(path))


def _differences(out: Path, wanted: dict[str, str]) -> list[str]:
    """One summary line per differing file (changed lines counted), missing file or stray CRD file."""
    problems: list[str] = []
    for name, text in wanted.items():
        path = out / name
        if not path.exists():
            problems.append(f"missing: {path}")
            continue
        have = path.read_text()
        if have != text:
            diff = list(difflib.unified_diff(have.splitlines(), text.splitlines(), lineterm="", n=0))
            added = sum(1 for d in diff if d.startswith("+") and not d.startswith("+++"))
            removed = sum(1 for d in diff if d.startswith("-") and not d.startswith("---"))
            first = next((d for d in diff if d.startswith("@@")), "")
            problems.append(f"differs: {path} (+{added} -{removed} lines; first change {first})")
    if out.is_dir():
        for path in sorted(out.glob("ckq.io_*.yaml")):
            if path.name not in wanted:
                problems.append(f"stale: {path} (no model generates it)")
    return problems
