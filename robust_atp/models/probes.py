"""Forward-hook probes: hooks on a model's modules that record only inside `with probe:`, so
the passes the adapter does not measure (generation, the reference model) cost nothing extra."""
from __future__ import annotations

import functools
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


class QKProbe(HookProbe):
    """Records the outputs of each layer's query and key modules during a pass: `q[i]`, `k[i]`
    ([B, T, H * hd]); where `first_query_only(i)`, only the first query (the CLS token's, [B, 1, ...]).
    `modules(layer)` -> (query module, key module): projections, or the q / k norms after them."""

    records = ("q", "k")

    def __init__(self, layers: list, modules: Callable, first_query_only: Callable[[int], bool] = lambda i: False):
        super().__init__()
        self.layers = layers
        self.q: dict = {}
        self.k: dict = {}
        for i, layer in enumerate(layers):
            q_mod, k_mod = modules(layer)
            self.hook(q_mod, functools.partial(self._keep, self.q, i, first_query_only(i)))
            self.hook(k_mod, functools.partial(self._keep, self.k, i, False))

    @staticmethod
    def _keep(store, i, first_only, module, args, out):
        store[i] = out[:, :1] if first_only else out
