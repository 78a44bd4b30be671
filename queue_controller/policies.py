"""Loading policy profiles: a name from the packaged profiles or a path to a YAML file.

The profiles (fifo, kueue, easy, iass, fair) are package data under `queue_controller/data/policies/`, read
through `importlib.resources`, so a wheel install finds them exactly as a source checkout does. The
repository's top-level `policies/` is a link to that directory, for paths in docs and on command lines.
"""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

import yaml
from pydantic import ValidationError

from queue_controller.engine.policy import Policy

POLICY_DIR: Traversable = files("queue_controller").joinpath("data", "policies")


class PolicyError(ValueError):
    """A policy that cannot be found or is invalid; the message says which field and what is allowed."""


def available() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in POLICY_DIR.iterdir() if p.name.endswith(".yaml"))


def load_policy(name_or_path: str) -> Policy:
    path = Path(name_or_path)
    source: Traversable | Path = path
    if not (path.suffix in (".yaml", ".yml") and path.exists()):
        source = POLICY_DIR.joinpath(f"{name_or_path}.yaml")
        if not source.is_file():
            raise PolicyError(
                f"unknown policy {name_or_path!r}: use one of {', '.join(available())} or a path to a YAML file"
            )
    try:
        data = yaml.safe_load(source.read_text())
    except yaml.YAMLError as e:
        raise PolicyError(f"{source}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise PolicyError(f"{source}: a policy is a YAML mapping with at least 'name'")
    try:
        return Policy.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
            lines.append(f"  {loc}: {err['msg']}")
        raise PolicyError(f"{source}: invalid policy\n" + "\n".join(lines)) from None
