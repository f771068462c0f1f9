"""pluggy hook specifications: the API a ponderlab plugin implements.

Each hook receives a `register` callback; call it once per class the plugin
provides. Hook API version: see `HOOK_API_VERSION` (bumped on breaking changes).
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

PROJECT_NAME = "ponderlab"
HOOK_API_VERSION = 1

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def ponderlab_register_backbones(register: Callable[[type], None]) -> None:
    """Register `Backbone` subclasses: `register(MyBackbone)`."""


@hookspec
def ponderlab_register_halting(register: Callable[[type], None]) -> None:
    """Register `HaltingStrategy` subclasses: `register(MyHalting)`."""


@hookspec
def ponderlab_register_tasks(register: Callable[[type], None]) -> None:
    """Register `Task` subclasses: `register(MyTask)`."""
