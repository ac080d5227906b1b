import atexit
import os
import shutil
import tempfile

import pytest
import torch

if "ROBUST_ATP_CACHE" not in os.environ:  # corrupted images of test runs stay out of ~/.cache
    os.environ["ROBUST_ATP_CACHE"] = tempfile.mkdtemp(prefix="robust_atp_cache_")
    atexit.register(shutil.rmtree, os.environ["ROBUST_ATP_CACHE"], True)
os.environ.setdefault("ROBUST_ATP_PROCS", "1")  # a test starts ranks only when it asks (--procs N)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# one torch thread per pytest-xdist worker (the workers share the cores), else up to two
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    from tests.helpers.tiny import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("tiny_llava"))


def _llava_adapter(llava, clip=None, max_new_tokens=5, attn="sdpa"):
    from robust_atp.models.base import load_adapter
    from robust_atp.suite import ModelCfg

    cfg = ModelCfg(checkpoint=str(llava), clip=str(clip) if clip else None, attn_implementation=attn,
                   generation={"max_new_tokens": max_new_tokens})
    return load_adapter(cfg)


@pytest.fixture(scope="session")
def make_adapter():
    """make_adapter(llava_dir, clip_dir=None, max_new_tokens=5, attn="sdpa") -> a llava adapter."""
    return _llava_adapter


@pytest.fixture(scope="session")
def tiny_adapter(tiny_dir):
    return _llava_adapter(tiny_dir / "llava", tiny_dir / "clip")


@pytest.fixture(scope="session")
def tiny_eager_adapter(tiny_dir):
    """The tiny LLaVA under eager attention (the reference for hooked attention and counted FLOPs)."""
    return _llava_adapter(tiny_dir / "llava", tiny_dir / "clip", attn="eager")


@pytest.fixture(scope="session")
def demo_adapter():
    from robust_atp.models.zoo.evaluate import load_demo

    return load_demo()


@pytest.fixture(scope="session")
def shapes_examples():
    from robust_atp.data import shapes

    return shapes.load_shapes("test", limit=16)


@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory):
    from tests.helpers.tiny_families import build_tiny_qwen2_vl

    return build_tiny_qwen2_vl(tmp_path_factory.mktemp("tiny_qwen2_vl"))


@pytest.fixture(scope="session")
def open_clip_config(tmp_path_factory):
    from tests.helpers.tiny_families import tiny_open_clip_config

    return tiny_open_clip_config(tmp_path_factory.mktemp("open_clip"))


@pytest.fixture(scope="session")
def tiny_next_dir(tmp_path_factory):
    from tests.helpers.tiny_families import build_tiny_llava_next

    return build_tiny_llava_next(tmp_path_factory.mktemp("tiny_llava_next"))


@pytest.fixture(scope="session")
def tiny_blip2_dir(tmp_path_factory):
    from tests.helpers.tiny_families import build_tiny_blip2

    return build_tiny_blip2(tmp_path_factory.mktemp("tiny_blip2"))


def _family_adapter(adapter: str, checkpoint, max_new_tokens: int, **kw):
    from robust_atp.models.base import load_adapter
    from robust_atp.suite import ModelCfg

    return load_adapter(ModelCfg(adapter=adapter, checkpoint=str(checkpoint),
                                 generation={"max_new_tokens": max_new_tokens}, **kw))


@pytest.fixture(scope="session")
def nxt(tiny_next_dir):
    """The tiny LLaVA-NeXT adapter with its CLIP model."""
    return _family_adapter("llava_next", tiny_next_dir / "llava_next", 6, clip=str(tiny_next_dir / "clip"))


@pytest.fixture(scope="session")
def qwen(tiny_qwen_dir):
    from tests.helpers.tiny_families import QWEN_PROMPT

    return _family_adapter("qwen2_vl", tiny_qwen_dir, 8, prompt=QWEN_PROMPT)


@pytest.fixture(scope="session")
def blip(tiny_blip2_dir):
    from tests.helpers.tiny_families import BLIP2_PROMPT

    return _family_adapter("blip2", tiny_blip2_dir, 6, prompt=BLIP2_PROMPT)


@pytest.fixture(scope="session")
def qwen25(tmp_path_factory):
    """The tiny Qwen2.5-VL adapter."""
    from tests.helpers.tiny_families import QWEN_PROMPT
    from tests.helpers.tiny_families_new import build_tiny_qwen2_5_vl

    path = build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("conf_qwen2_5_vl"))
    return _family_adapter("qwen2_5_vl", path, 8, prompt=QWEN_PROMPT)


@pytest.fixture(scope="session")
def qwen3(tmp_path_factory):
    """The tiny Qwen3-VL adapter."""
    from tests.helpers.tiny_families import QWEN_PROMPT
    from tests.helpers.tiny_families_new import build_tiny_qwen3_vl

    path = build_tiny_qwen3_vl(tmp_path_factory.mktemp("conf_qwen3_vl"))
    return _family_adapter("qwen3_vl", path, 8, prompt=QWEN_PROMPT)


@pytest.fixture(scope="session")
def onevision(tmp_path_factory):
    """The tiny LLaVA-OneVision adapter."""
    from tests.helpers.tiny_families_new import ONEVISION_PROMPT, build_tiny_llava_onevision

    path = build_tiny_llava_onevision(tmp_path_factory.mktemp("conf_llava_onevision"))
    return _family_adapter("llava_onevision", path, 6, prompt=ONEVISION_PROMPT)


@pytest.fixture(scope="session")
def intern(tmp_path_factory):
    """The tiny InternVL adapter."""
    from tests.helpers.tiny_families_new import INTERNVL_PROMPT, build_tiny_internvl

    path = build_tiny_internvl(tmp_path_factory.mktemp("conf_internvl"))
    return _family_adapter("internvl", path, 6, prompt=INTERNVL_PROMPT)
