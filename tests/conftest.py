"""Shared pytest setup. Tier fixtures live in tests/plugins/ so each tier owns its own file."""

pytest_plugins = ["tests.plugins.cluster", "tests.plugins.criu", "tests.plugins.controller", "tests.plugins.realnodes",
                  "tests.plugins.helm"]


def pytest_collection_modifyitems(items: list) -> None:  # type: ignore[type-arg]
    """The chaos tier runs last: its faults (the API server restarted in place) must not leave the shared
    cluster half-recovered for the tiers after it."""
    items.sort(key=lambda item: item.get_closest_marker("chaos") is not None)
