"""Models shipped inside the package. `zoo:shapes_vlm/llava` and `zoo:shapes_vlm/clip` are the
offline demo VLM and its CLIP model (see shapes_vlm/README.md, the model card)."""
from pathlib import Path

ZOO_DIR = Path(__file__).resolve().parent
DEMO_LLAVA = "zoo:shapes_vlm/llava"
DEMO_CLIP = "zoo:shapes_vlm/clip"
