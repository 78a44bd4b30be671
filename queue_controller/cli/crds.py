"""`ckq crds`: write CRD YAML generated from the API models. Placeholder until the models land."""


def crds() -> None:
    """Write crds/*.yaml from the pydantic API models."""
    raise NotImplementedError
