"""COCO Captions on the Karpathy split (dataset_coco.json), for captioning.

dataset_coco.json is {"images": [{filepath, filename, imgid, split, sentences: [{raw, tokens,
...}], cocoid}], "dataset": "coco"}; an image is <image_root>/<filepath>/<filename>. Each
example's `question` is the captioning instruction (`prompt`), its `answers` the raw
reference captions.
"""
from __future__ import annotations

from .base import Example, register_loader
from .sources import DataError, inside, lazy_image, local_root, read_json, require

KARPATHY_URL = "https://cs.stanford.edu/people/karpathy/deepimagesent/ (caption_datasets.zip)"
COCO_URL = "https://cocodataset.org/#download"
PROMPT = "Provide a one-sentence caption for the provided image."
_SPLITS = ("train", "restval", "val", "test")


@register_loader("coco_captions")
def load_coco_captions(split: str = "test", limit: int | None = None, source: str | None = None,
                       image_root: str | None = None, prompt: str = PROMPT) -> list[Example]:
    if split not in _SPLITS:
        raise DataError(f"unknown Karpathy split {split!r}; one of {', '.join(_SPLITS)}")
    root = local_root(source, KARPATHY_URL)
    path = require(root, source, ["dataset_coco.json", "caption_datasets/dataset_coco.json"], KARPATHY_URL)
    images_root = require(root, source, image_root, COCO_URL, configured=True) if image_root else root
    data = read_json(path)
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise DataError(f"{path}: expected {{'images': [...]}} (Karpathy split format)")
    out, dirs = [], {}
    for im in images:
        if not isinstance(im, dict) or im.get("split") != split:
            continue
        refs = tuple(str(s["raw"]).strip() for s in im.get("sentences") or () if isinstance(s, dict) and s.get("raw"))
        if not refs:
            continue
        if not isinstance(im.get("filename"), str):
            raise DataError(f"{path}: image {im.get('imgid', '?')}: missing 'filename'")
        fp = str(im.get("filepath") or "")
        if fp not in dirs:
            dirs[fp] = require(images_root, source, fp, COCO_URL) if fp else images_root
        cocoid = im.get("cocoid", im.get("imgid"))
        out.append(Example(id=str(cocoid), image_id=str(cocoid), image=lazy_image(inside(dirs[fp], im["filename"])),
                           question=prompt, answers=refs, question_type="caption", answer_type="caption",
                           meta={"filename": im["filename"], "imgid": im.get("imgid")}))
        if limit is not None and len(out) >= limit:
            break
    return out
