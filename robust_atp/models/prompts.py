"""Where an adapter's prompt comes from: the suite's `model.prompt`, else the checkpoint's own
chat template (as lmms-eval and the model cards build it: one user turn holding the image, then
the question and the suite's `model.post_prompt`, with the generation prompt), else the adapter's
documented default (a checkpoint whose processor carries no template, such as the demo model).

The template is rendered once, with a sentinel in place of the question, into a format string in
the suite's own notation (`<image>` for the one image, `{question}`), so the adapters' prompt
code is the same whichever the source."""
from __future__ import annotations

from ..errors import UserError

SUITE, TEMPLATE, DEFAULT = "model.prompt", "chat_template", "adapter default"
_SENTINEL = "\x00question\x00"


def resolve_prompt(cfg, processor, default: str) -> tuple[str, str]:
    """-> (format string with `<image>` and `{question}`, its source: SUITE, TEMPLATE or DEFAULT)."""
    if cfg.prompt is not None:
        return cfg.prompt, SUITE
    rendered = render_chat_template(processor, cfg.post_prompt)
    if rendered is None:
        return default.replace("{question}", "{question}" + _escape(cfg.post_prompt)), DEFAULT
    return rendered, TEMPLATE


def render_chat_template(processor, post_prompt: str = "") -> str | None:
    """The processor's chat template for one image and one question, as a format string; None
    when the processor has no template."""
    if not getattr(processor, "chat_template", None):
        return None
    image = getattr(processor, "image_token", None) or "<image>"
    turn = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": _SENTINEL + post_prompt}]}]
    try:
        text = processor.apply_chat_template(turn, add_generation_prompt=True, tokenize=False)
    except Exception as e:  # a template is user-supplied code: name the field, not a traceback
        raise UserError(f"model.checkpoint: its chat template cannot render one image and a question "
                        f"({type(e).__name__}: {e}); set model.prompt") from None
    if isinstance(text, list):  # some processors return one string per conversation
        text = text[0]
    if text.count(_SENTINEL) != 1 or text.count(image) != 1:
        raise UserError(f"model.checkpoint: its chat template did not render exactly one question and one "
                        f"image token {image!r}; set model.prompt")
    return _escape(text).replace(image, "<image>", 1).replace(_SENTINEL, "{question}")


def _escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")
