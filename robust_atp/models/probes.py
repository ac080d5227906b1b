"""Forward-hook probes: hooks on a model's modules that record only inside `with probe:`, so
the passes the adapter does not measure (generation, the reference model) cost nothing extra."""
from __future__ import annotations

from typing import Callable


class HookProbe:
    """Base of the probes. `records`: names of the dict attributes the hooks fill, emptied on
    entry; `scratch`: those emptied on exit too (context a hook passes to a later hook)."""

    records: tuple[str, ...] = ()
    scratch: tuple[str, ...] = ()

    def __init__(self):
        self.active = False

    def hook(self, module, fn: Callable, pre: bool = False) -> None:
        """fn(module, args, out), or with `pre` fn(module, args, kwargs) before the forward; run
        only while the probe is active."""
        def call(*args):
            if self.active:
                return fn(*args)
            return None

        if pre:
            module.register_forward_pre_hook(call, with_kwargs=True)
        else:
            module.register_forward_hook(call)

    def __enter__(self):
        for name in self.records:
            getattr(self, name).clear()
        self.active = True
        return self

    def __exit__(self, *exc):
        self.active = False
        for name in self.scratch:
            getattr(self, name).clear()
