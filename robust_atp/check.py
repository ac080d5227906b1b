"""`python -m robust_atp.run SUITE --check`: validate a suite and print what it would run.

Loads no weights and downloads nothing. The suite is validated as a run would (methods,
loader, presets, metrics); the dataset is looked for where `dataset.source` points: local
files are read (question files only; images stay on disk) and counted, a hub dataset is
named but not fetched. Data that is simply not downloaded on this machine is reported with
where to get it, and the check still succeeds (exit 0): the configuration is valid. An
invalid configuration is a one-line error and exit 2, as for a run.
"""
from __future__ import annotations

import sys
from pathlib import Path


def check_suite(suite, suite_path: Path, out=None) -> int:
    from .beside_published import plan_lines
    from .conditions import condition_names
    from .perturb.image import resolve_image_conditions
    from .perturb.text import resolve_text_conditions
    from .prune.methods import validate_method
    from .subsets import RULE

    out = out or sys.stdout
    say = lambda line="": print(line, file=out)
    methods = [validate_method(m) for m in suite.methods]
    _check_adapter(suite.model, suite_path)
    _check_downsample(methods, suite.model, suite_path)
    image_conditions = resolve_image_conditions(suite.perturbations.image)
    text_conditions = resolve_text_conditions(suite.perturbations.text)
    conditions = condition_names(image_conditions, suite.include_clean, text_conditions, suite.perturbations.cross)
    d = suite.dataset
    say(f"suite {suite.name} ({suite_path}): valid")
    say(f"  dataset: loader {d.loader}, split {d.split}, source {d.source or '-'}"
        f"{f', limit {d.limit}' if d.limit else ''}")
    n, data_note = _count_examples(suite, suite_path)
    say(f"  data: {data_note}")
    clip = f", clip {_describe_ref(suite.model.clip, 'model.clip')}" if suite.model.clip else ""
    sc = suite.model.scorer
    if sc is not None:
        clip += f", scorer {sc.kind} {sc.model} ({sc.pretrained or 'random weights'})"
    say(f"  model: {suite.model.adapter} {_describe_ref(suite.model.checkpoint, 'model.checkpoint')}{clip}, "
        f"{suite.model.dtype} on {suite.model.device}"
        f"{f', device_map {suite.model.device_map}' if suite.model.device_map is not None else ''}"
        f"{f', {suite.model.attn_implementation} attention' if suite.model.attn_implementation != 'sdpa' else ''}"
        " (weights not loaded)")
    m = suite.model
    say("  prompt: " + (repr(m.prompt) if m.prompt is not None else
                        "the checkpoint's chat template" + (f" with post_prompt {m.post_prompt!r}" if m.post_prompt else "")
                        + f" (the {m.adapter} adapter's default when the checkpoint has none)"))
    say(f"  methods ({len(methods)}): {', '.join(m.label for m in methods)}")
    shown = ", ".join(conditions[:6]) + (f", ... ({len(conditions) - 6} more)" if len(conditions) > 6 else "")
    say(f"  conditions ({len(conditions)}): {shown}")
    say(f"  metrics: {', '.join(suite.metrics)}")
    for line in plan_lines(suite):  # what the run's figures will be put beside
        say(line)
    for name, sub in suite.stats.subsets.items():
        say(f"  subset {name}: every table and test also on the questions {sub.discriminator} answers wrong "
            f"on the clean input ({RULE})")
    per_example = len(conditions) * len(methods)
    if n is None:
        bound = f" (at most {d.limit * per_example})" if d.limit else ""
        say(f"  plan: ? examples x {len(conditions)} conditions x {len(methods)} methods = "
            f"{per_example} generations per example{bound}")
    else:
        say(f"  plan: {n} examples x {len(conditions)} conditions x {len(methods)} methods = "
            f"{n * per_example} generations")
    return 0


def _count_examples(suite, suite_path: Path):
    from .data.dataset import check_options, load_dataset
    from .data.sources import DataMissing, is_hf

    d = suite.dataset
    check_options(d, suite_path)
    if is_hf(d.source) and not Path(d.source[3:]).expanduser().is_dir():
        return None, (f"hub dataset {d.source[3:]!r}: fetched by `datasets` on the first run (not checked: --check "
                      "downloads nothing)")
    try:
        examples = load_dataset(d, suite_path, validate=False, missing_is_error=False)
    except DataMissing as e:
        return None, (f"not found here: dataset.source: {e}. The configuration is valid; "
                      "download the data to run it")
    return len(examples), f"found, {len(examples)} examples"


def _describe_ref(ref: str, field: str) -> str:
    from .models.base import resolve_checkpoint

    resolved = resolve_checkpoint(ref, field)
    if resolved == ref and not Path(ref).expanduser().exists():
        return f"{ref} (hub id, fetched on the first run)"
    return f"{ref} (local: {resolved})"


def _check_downsample(methods, model, suite_path: Path) -> None:
    """`downsample` on an adapter whose token count is fixed: the run's one-line refusal (its
    reason names the tower, which only a loaded adapter knows), before any weight is read."""
    from .models.base import adapter_class
    from .preflight import refuse_downsample

    if not getattr(adapter_class(model.adapter), "token_count_follows_image", False):
        refuse_downsample(methods, f"the {model.adapter} adapter's does not", suite_path)


def _check_adapter(model, suite_path: Path) -> None:
    """The adapter exists, and a scorer names a model open_clip knows (no weights are read)."""
    from .errors import UserError
    from .models.base import adapter_names

    if model.adapter not in adapter_names():
        raise UserError(f"{suite_path}: model.adapter: unknown adapter {model.adapter!r}; "
                        f"known: {', '.join(adapter_names())}")
    sc = model.scorer
    if sc is not None and not sc.model.endswith(".json") and ":" not in sc.model:
        import open_clip

        if sc.model not in open_clip.list_models():
            raise UserError(f"{suite_path}: model.scorer.model: unknown open_clip model {sc.model!r}")
