"""Loading policy profiles: a name from `policies/` or a path to a YAML file."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from queue_controller.engine.policy import Policy

# The repository's policies/ directory (an editable install or a source checkout).
POLICY_DIR = Path(__file__).resolve().parent.parent / "policies"


class PolicyError(ValueError):
    """A policy that cannot be found or is invalid; the message says which field and what is allowed."""


def available() -> list[str]:
    return sorted(p.stem for p in POLICY_DIR.glob("*.yaml"))


def load_policy(name_or_path: str) -> Policy:
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.exists()):
        path = POLICY_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            raise PolicyError(
                f"unknown policy {name_or_path!r}: use one of {', '.join(available())} or a path to a YAML file"
            )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise PolicyError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise PolicyError(f"{path}: a policy is a YAML mapping with at least 'name'")
    try:
        return Policy.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
            lines.append(f"  {loc}: {err['msg']}")
        raise PolicyError(f"{path}: invalid policy\n" + "\n".join(lines)) from None
