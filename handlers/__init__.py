"""Built-in handlers, published as the `builtin` entry point of `osma_router.handlers`:
`noop`, `ogsm.indicator_report`, `ogsm.goal_report`, `ogsm.action`, `osma.task_metadata`
(see docs/upstream.md)."""

from __future__ import annotations

from receiver import HandlerGroup

from . import noop, ogsm_action, ogsm_reports, osma_metadata

group = HandlerGroup()
for _module in (noop, ogsm_reports, ogsm_action, osma_metadata):
    _module.register(group)

__all__ = ["group"]
