"""`ckq simulate`: placeholder until the simulator lands."""


def simulate() -> None:
    """Replay a workload trace through the engine and write metrics and plots."""
    raise NotImplementedError
