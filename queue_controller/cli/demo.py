"""`ckq demo`: placeholder."""


def demo() -> None:
    """Show the product working."""
    raise NotImplementedError
