"""Seeds derived from content, never from order: hash(suite seed, example id, condition, ...)."""
from __future__ import annotations

import hashlib
import random
import threading
from contextlib import contextmanager

import numpy as np

# Libraries we call (imagecorruptions, nlpaug) draw from Python's `random` and NumPy's global
# generator; one process-wide lock keeps two seeded calls from interleaving their draws.
_GLOBAL_RNG_LOCK = threading.RLock()


def stable_seed(*parts) -> int:
    """A 63-bit seed from the parts' string forms; the same in every process and platform."""
    blob = "\x1f".join(str(p) for p in parts).encode("utf-8")
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little") & (2**63 - 1)


@contextmanager
def seeded_global_rngs(seed: int):
    """Python's `random` and NumPy's global generator seeded with `seed` for the block, under
    one lock; their previous states are restored afterwards, so nothing leaks in or out."""
    with _GLOBAL_RNG_LOCK:
        py_state, np_state = random.getstate(), np.random.get_state()
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
