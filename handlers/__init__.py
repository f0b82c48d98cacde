"""Built-in handlers, published as the `builtin` entry point of `osma_router.handlers`."""

from __future__ import annotations

from receiver.plugins import HandlerGroup

from .noop import register as _register_noop

group = HandlerGroup()
_register_noop(group)

__all__ = ["group"]
