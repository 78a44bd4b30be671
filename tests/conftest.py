"""Shared pytest setup. Tier fixtures live in tests/plugins/ so each tier owns its own file."""

pytest_plugins = ["tests.plugins.cluster", "tests.plugins.criu", "tests.plugins.controller", "tests.plugins.realnodes",
                  "tests.plugins.helm"]
