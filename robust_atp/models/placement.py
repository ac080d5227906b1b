"""Where a checkpoint's weights go: one device (`model.device`), or accelerate's big-model
placement (`model.device_map`) for models larger than one GPU, and which attention kernel runs.

`model.device_map` is what `from_pretrained(device_map=...)` takes: a strategy (`auto`,
`balanced`, `balanced_low_0`, `sequential`) or an explicit {module name: device} map, whose devices
are GPU indices, `cuda:N`, `cpu` or `disk` (offloaded to `model.offload_folder`, loaded layer by
layer as it runs). Accelerate's hooks move each module's inputs to its device; the adapters' own
forward hooks (saliency, FastV) sit on the same modules and fire as they would on one device.

Data-parallel runs (torchrun / accelerate launch, LOCAL_RANK of LOCAL_WORLD_SIZE on a node) with a
device map: the node's G GPUs are cut into LOCAL_WORLD_SIZE contiguous shares of
G // LOCAL_WORLD_SIZE, and rank r owns GPUs [r * share, (r + 1) * share): a strategy places the
model over that share only (accelerate's `max_memory` lists no other GPU), and an explicit map's
GPU k means the k-th GPU of the share (so one map serves every rank)."""
from __future__ import annotations

import importlib.util
import os

import torch

from ..errors import UserError

STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


def check_attention(cfg) -> None:
    """Refuse an attention kernel this machine or this dtype cannot run, naming the field."""
    if cfg.attn_implementation != "flash_attention_2":
        return
    if importlib.util.find_spec("flash_attn") is None:
        raise UserError("model.attn_implementation: flash_attention_2 needs the flash-attn package, which is not "
                        "installed here (pip install flash-attn, or use sdpa)")
    if cfg.dtype == "float32":
        raise UserError("model.dtype: flash_attention_2 runs in float16 or bfloat16, not float32")
    if not cfg.device.startswith("cuda"):
        raise UserError(f"model.device: flash_attention_2 needs a CUDA device, not {cfg.device!r}")


def rank_share(local_rank: int, local_world: int, n_gpus: int) -> list[int]:
    """The GPUs a data-parallel rank owns on its node (all of them in a single process)."""
    if local_world <= 1:
        return list(range(n_gpus))
    share = n_gpus // local_world
    if share == 0:
        raise UserError(f"model.device_map: {local_world} processes on this node share {n_gpus} GPU(s); each "
                        "needs at least one (start fewer processes per node)")
    return list(range(local_rank * share, (local_rank + 1) * share))


def placement(device_map, offload_folder: str | None, *, local_rank: int = 0, local_world: int = 1,
              n_gpus: int = 0, free_memory=None) -> dict:
    """The `from_pretrained` keyword arguments for a suite's `model.device_map` on this rank.
    free_memory: {device: bytes} as accelerate's `get_max_memory()` gives (read when needed)."""
    own = rank_share(local_rank, local_world, n_gpus)
    kw: dict = {}
    if isinstance(device_map, str):
        kw["device_map"] = device_map
        if local_world > 1:  # this rank's share only
            if free_memory is None:
                from accelerate.utils import get_max_memory

                free_memory = get_max_memory()
            kw["max_memory"] = {k: v for k, v in free_memory.items() if k in own or not isinstance(k, int)}
    else:
        kw["device_map"] = {name: _own_device(dev, own, name) for name, dev in device_map.items()}
    if offload_folder is not None:
        kw["offload_folder"] = offload_folder
    return kw


def _own_device(dev, own: list[int], name: str):
    if dev in ("cpu", "disk", "meta"):
        return dev
    k = int(dev[5:]) if isinstance(dev, str) else int(dev)
    if k >= len(own):
        raise UserError(f"model.device_map: {name!r} -> GPU {k}, but this process owns {len(own)} GPU(s)")
    return own[k]


def rank_placement(cfg) -> dict:
    """`placement` for this process (LOCAL_RANK / LOCAL_WORLD_SIZE as torchrun and accelerate set them)."""
    return placement(cfg.device_map, cfg.offload_folder, local_rank=int(os.environ.get("LOCAL_RANK", 0)),
                     local_world=int(os.environ.get("LOCAL_WORLD_SIZE", 1)),
                     n_gpus=torch.cuda.device_count() if torch.cuda.is_available() else 0)


def input_device(model) -> torch.device:
    """Where a dispatched model's inputs start: the input embeddings' device (their execution
    device when offloaded), else the first GPU or the CPU of its map."""
    emb = model.get_input_embeddings()
    hook = getattr(emb, "_hf_hook", None)
    dev = getattr(hook, "execution_device", None) if hook is not None else None
    if dev is None:
        dev = emb.weight.device
    dev = torch.device(dev if not isinstance(dev, int) else f"cuda:{dev}")
    return torch.device("cpu") if dev.type == "meta" else dev
