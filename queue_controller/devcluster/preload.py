"""Which images a real node holds from the start, and which ckq builds in all.

Above both image builders (`images`: pause, python, controller; `runtime_image`: the injected
runtime), so neither imports the other's caller.
"""

from __future__ import annotations

from collections.abc import Callable

from queue_controller.devcluster.images import LocalImage, controller_image, pause_image, python_image
from queue_controller.devcluster.runtime_image import runtime_image


def local_images(*, log: Callable[[str], None] = lambda _: None) -> list[LocalImage]:
    """Every image a real node is preloaded with (built or reused from the cache)."""
    return [pause_image(), python_image(log=log), runtime_image(log=log)]


def all_images(*, log: Callable[[str], None] = lambda _: None) -> list[LocalImage]:
    """The preloaded images plus the controller image (built by `ckq dev build`, loaded on demand with
    `ckq dev image import`: it changes with every source edit, and no dev node runs it by default)."""
    return [*local_images(log=log), controller_image(log=log)]
