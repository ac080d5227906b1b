"""Suite schema and loading: a YAML file in, a validated `Suite` out, or one clear error line.

Every user error becomes `SuiteError("<file>: <field.path>: <message>")`; the CLI prints it
and exits 2.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import SuiteError
from .validation import format_validation_error


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetCfg(Strict):
    loader: str
    source: str | None = None
    split: str = "test"
    limit: int | None = Field(default=None, gt=0)
    options: dict[str, Any] = Field(default_factory=dict)


class GenerationCfg(Strict):
    """Greedy decoding. EOS, pad and BOS come from the checkpoint's generation config; nothing
    else of it is inherited: a penalty applies only when set here (see models.base)."""

    max_new_tokens: int = Field(default=10, gt=0, le=512)
    do_sample: bool = False
    repetition_penalty: float | None = Field(default=None, gt=0)
    no_repeat_ngram_size: int | None = Field(default=None, ge=0)

    @field_validator("do_sample")
    @classmethod
    def _greedy(cls, v: bool) -> bool:
        if v:
            raise ValueError("sampling is not supported: answers must not depend on the batch, order or process; "
                             "decoding is greedy")
        return v


class ScorerCfg(Strict):
    """An external CLIP scorer for ATP's relevance term (see models.scorer)."""

    kind: Literal["open_clip"] = "open_clip"
    model: str  # an open_clip model name, a model config .json, local-dir:<dir> or hf-hub:<repo>
    pretrained: str | None = None  # a tag (e.g. openai), a checkpoint path, or None (random weights)


# methods that split a budget over LLaVA-NeXT's crops (they rank by a score; see prune.methods)
PER_CROP_METHODS = ("full", "atp", "cls", "clip", "random")
# settings only some adapters read: naming one for another adapter is a mistake
ADAPTER_SETTINGS = {"saliency": ("qwen2_vl",), "budget_scope": ("llava_next",),
                    "scorer": ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava_next", "blip2")}


class ModelCfg(Strict):
    adapter: str = "llava"
    checkpoint: str
    # CLIP model whose text tower and visual projection give ATP's relevance term; its
    # vision tower must be the VLM's (LLaVA-1.5: openai/clip-vit-large-patch14-336).
    clip: str | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = "cpu"
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    # accelerate's big-model placement (`models.placement`): auto, balanced, balanced_low_0, sequential,
    # or {module name: GPU index | "cuda:N" | "cpu" | "disk"}; "disk" needs offload_folder
    device_map: str | dict[str, int | str] | None = None
    offload_folder: str | None = None
    # None: the checkpoint's chat template (one user turn: the image, then the question and
    # `post_prompt`), or the adapter's default when the checkpoint has none (`models.prompts`)
    prompt: str | None = None
    # text after the question inside the chat template's user turn (lmms-eval's post_prompt), e.g.
    # "\nAnswer the question using a single word or phrase."; with `prompt` set, write it there
    post_prompt: str = ""
    generation: GenerationCfg = Field(default_factory=GenerationCfg)
    trust_remote_code: bool = False
    # Qwen2-VL (no CLS token): the saliency that stands in for CLS attention (default attention)
    saliency: Literal["attention", "feature_norm"] | None = None
    # LLaVA-NeXT: a token budget over all crops at once, or the same share of each crop (default global)
    budget_scope: Literal["global", "per_crop"] | None = None
    # an external CLIP model for the relevance term when the VLM's tower is not in a CLIP space
    scorer: ScorerCfg | None = None

    @field_validator("device_map")
    @classmethod
    def _device_map(cls, v):
        from .models.placement import STRATEGIES

        if isinstance(v, str) and v not in STRATEGIES:
            raise ValueError(f"must be one of {', '.join(STRATEGIES)} or a {{module: device}} map, got {v!r}")
        if isinstance(v, dict):
            for name, dev in v.items():
                ok = (isinstance(dev, int) and dev >= 0) or dev in ("cpu", "disk") or (
                    isinstance(dev, str) and dev.startswith("cuda:") and dev[5:].isdigit())
                if not ok:
                    raise ValueError(f"{name!r}: a device is a GPU index, 'cuda:N', 'cpu' or 'disk', got {dev!r}")
        return v

    @model_validator(mode="after")
    def _offload(self):
        if isinstance(self.device_map, dict) and "disk" in self.device_map.values() and not self.offload_folder:
            raise ValueError("'disk' in device_map needs offload_folder (where the offloaded weights are written)")
        return self

    @model_validator(mode="after")
    def _post_prompt_with_template(self):
        if self.post_prompt and self.prompt is not None:
            raise ValueError("'post_prompt' applies to the chat template; with 'prompt' set, write it in the prompt")
        return self

    @model_validator(mode="after")
    def _adapter_settings(self):
        for name, adapters in ADAPTER_SETTINGS.items():
            if getattr(self, name) is not None and self.adapter not in adapters:
                raise ValueError(f"'{name}' applies to the {', '.join(adapters)} adapter(s), not {self.adapter!r}")
        return self

    @field_validator("prompt")
    @classmethod
    def _prompt_fields(cls, v: str | None) -> str | None:
        if v is not None and ("<image>" not in v or "{question}" not in v):
            raise ValueError("must contain '<image>' and '{question}'")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not (v in ("cpu", "cuda", "mps") or v.startswith("cuda:")):
            raise ValueError(f"must be cpu, cuda, cuda:N or mps, got {v!r}")
        return v


class MethodCfg(BaseModel):
    """`name` picks a registered method; the other keys are that method's settings,
    validated by the method's own schema (see `prune.methods`)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str
    label: str | None = None


class ImagePerturbCfg(Strict):
    preset: str | None = None
    corruptions: list[str] | None = None
    severities: list[int] = Field(default_factory=lambda: [1, 2, 3, 4, 5])
    # resize the shorter side to this and centre-crop a square before corrupting (clean too);
    # None: native size. Corruption kernels are in pixels, so this fixes what a severity means.
    resolution: int | None = Field(default=None, ge=32, le=4096)

    @field_validator("severities")
    @classmethod
    def _sev(cls, v: list[int]) -> list[int]:
        bad = [s for s in v if s not in (1, 2, 3, 4, 5)]
        if bad or not v:
            raise ValueError(f"severities must be a non-empty list of integers in 1..5, got {v}")
        return sorted(set(v))

    @model_validator(mode="after")
    def _one_source(self):
        if (self.preset is None) == (self.corruptions is None):
            raise ValueError("give exactly one of 'preset' or 'corruptions'")
        return self


class TextPerturbCfg(Strict):
    preset: str | None = None
    perturbations: list[str] | None = None
    severities: list[int] = Field(default_factory=lambda: [1, 2, 3, 4, 5])

    _sev = field_validator("severities")(ImagePerturbCfg._sev.__func__)

    @model_validator(mode="after")
    def _one_source(self):
        if (self.preset is None) == (self.perturbations is None):
            raise ValueError("give exactly one of 'preset' or 'perturbations'")
        return self


class PerturbCfg(Strict):
    image: ImagePerturbCfg | None = None
    text: TextPerturbCfg | None = None
    # image x text conditions as well; by default each text condition runs on the clean image
    # and each image condition with the clean question
    cross: bool = False


class SubsetCfg(Strict):
    """A subset of the questions every table and test is also reported on (see robust_atp.subsets)."""

    # a method label of the suite: the subset is the questions it answers wrong on the clean input
    discriminator: str


SUBSET_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class StatsCfg(Strict):
    """How the report's statistics are computed (see robust_atp.stats)."""

    confidence: float = Field(default=0.95, gt=0.5, lt=1)
    bootstrap: int = Field(default=10_000, ge=100, le=1_000_000)  # resamples (and sign-flip permutations)
    # group_id: the sample field of grouped benchmarks (MME's image pairs, MMBench's circular copies)
    cluster_by: Literal["image_id", "example_id", "group_id"] = "image_id"
    # maxt: Westfall-Young max-T step-down over the shared sign flips (works at any permutation count);
    # holm: Holm over each comparison's own p-value (needs bootstrap + 1 >= comparisons / alpha)
    correction: Literal["maxt", "holm"] = "maxt"
    # name -> subset, e.g. {difficult: {discriminator: pool@0.25}} (VTC-Bench's difficult questions)
    subsets: dict[str, SubsetCfg] = Field(default_factory=dict)

    @field_validator("subsets")
    @classmethod
    def _subset_names(cls, v: dict) -> dict:
        for name in v:
            if not re.fullmatch(SUBSET_NAME, name):
                raise ValueError(f"subset name {name!r}: must be a simple identifier (letters, digits, _; "
                                 "not starting with a digit)")
        return v


class ReportCfg(Strict):
    formats: list[Literal["html", "pdf"]] = Field(default_factory=lambda: ["html", "pdf"])


class CostCfg(Strict):
    """Measured cost on a sample of batches (see robust_atp.measure.measure_cost); off by default
    so accuracy-only runs cost nothing extra. It never changes a prediction."""

    latency: bool = False  # time vision, scoring + selection, prefill, decoding, generate; peak memory
    flops: bool = False  # count the prefill's FLOPs with torch's FlopCounterMode beside the analytical count
    repeats: int = Field(default=5, ge=1, le=1000)  # timed runs per measurement (the median is kept)
    warmup: int = Field(default=1, ge=0, le=100)  # untimed runs first
    batches: int = Field(default=1, ge=1)  # the first this many batches of every condition are measured

    @property
    def enabled(self) -> bool:
        return self.latency or self.flops


class PublishedCfg(Strict):
    """Published figures to put beside the run's (`published/<model>.yaml`; see beside_published)."""

    model: str  # e.g. llava-1.5-7b
    benchmark: str  # e.g. pope, mme, textvqa, scienceqa_img, mmbench_en, vqav2, gqa


class Suite(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = 0
    dataset: DatasetCfg
    model: ModelCfg
    methods: list[MethodCfg] = Field(min_length=1)
    perturbations: PerturbCfg = Field(default_factory=PerturbCfg)
    metrics: list[str] = Field(default_factory=lambda: ["exact_match"], min_length=1)
    batch_size: int = Field(default=16, gt=0)
    include_clean: bool = True
    stats: StatsCfg = Field(default_factory=StatsCfg)
    report: ReportCfg = Field(default_factory=ReportCfg)
    cost: CostCfg = Field(default_factory=CostCfg)
    published: PublishedCfg | None = None

    @model_validator(mode="after")
    def _per_crop_methods(self):
        if self.model.budget_scope == "per_crop":
            other = [m.name for m in self.methods if m.name not in PER_CROP_METHODS]
            if other:
                raise ValueError(f"model.budget_scope per_crop applies to {', '.join(PER_CROP_METHODS)}; "
                                 f"{', '.join(sorted(set(other)))} budget over all tokens (use budget_scope: global)")
        return self

    def config_hash(self) -> str:
        """What the predictions depend on. Batch size is left out (answers are batch-size
        invariant) and so is the dataset limit (rows are keyed by example id, so a larger
        limit extends a run instead of invalidating it)."""
        d = self.model_dump(mode="json")
        d.pop("batch_size")
        d.pop("stats")  # statistics and report formats are computed from predictions, never change them
        d.pop("report")
        d.pop("published", None)  # what the report compares with, not what is predicted
        d.pop("cost")  # measured cost is kept apart from the predictions (store table `cost`)
        d["dataset"].pop("limit")
        d["model"].pop("device")
        for key in ("device_map", "offload_folder"):  # placement: the answers do not depend on it (tested)
            d["model"].pop(key, None)
        if not d["model"].get("post_prompt"):  # unset: older suites keep their hash
            d["model"].pop("post_prompt", None)
        gen = d["model"]["generation"]
        for key in ("repetition_penalty", "no_repeat_ngram_size"):  # unset: older suites keep their hash
            if gen.get(key) is None:
                gen.pop(key, None)
        gen.pop("do_sample")  # always false
        for key in ADAPTER_SETTINGS:  # unset adapter settings keep older suites' hashes
            if d["model"].get(key) is None:
                d["model"].pop(key, None)
        # suites that predate an option and leave it at its default keep their hash
        image, pert = d["perturbations"].get("image"), d["perturbations"]
        if image and image.get("resolution") is None:
            image.pop("resolution")
        if pert.get("text") is None:
            pert.pop("text", None)
        if pert.get("cross") is False:
            pert.pop("cross", None)
        blob = json.dumps(d, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


class StrictSafeLoader(yaml.SafeLoader):
    """yaml.SafeLoader (plain data only: no Python objects) that refuses a key given twice in
    one mapping, where PyYAML would silently keep the last."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`, resolved by the base class
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                repeated = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if repeated:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} given twice",
                                                        key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def load_suite(path: str | Path, overrides: dict[str, Any] | None = None) -> Suite:
    """Read, validate and normalise a suite; method settings are checked by their schemas."""
    from .prune.methods import validate_method

    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"{path}: no such suite file")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=StrictSafeLoader)  # noqa: S506 (a SafeLoader)
    except OSError as e:
        raise SuiteError(f"{path}: cannot read the suite file ({e.strerror})") from None
    except UnicodeDecodeError:
        raise SuiteError(f"{path}: not UTF-8 text") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "<root>"
        raise SuiteError(f"{path}: {where}: malformed YAML ({getattr(e, 'problem', None) or e})") from None
    if raw is None:
        raise SuiteError(f"{path}: <root>: the suite file is empty")
    if not isinstance(raw, dict):
        raise SuiteError(f"{path}: <root>: must be a mapping of suite fields")
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value)
    try:
        suite = Suite.model_validate(raw)
    except ValidationError as e:
        raise SuiteError(format_validation_error(str(path), e, Suite)) from None
    seen = {}
    for i, m in enumerate(suite.methods):
        try:
            method = validate_method(m)
        except SuiteError as e:
            raise SuiteError(f"{path}: methods[{i}]{e}") from None
        if method.label in seen:
            raise SuiteError(f"{path}: methods[{i}]: label {method.label!r} repeats methods[{seen[method.label]}]; "
                             "give one of them a distinct 'label'")
        seen[method.label] = i
    from .perturb.image import resolve_image_conditions
    from .perturb.text import resolve_text_conditions
    for field, resolve in (("image", resolve_image_conditions), ("text", resolve_text_conditions)):
        try:
            resolve(getattr(suite.perturbations, field))
        except SuiteError as e:
            raise SuiteError(f"{path}: perturbations.{field}{e}") from None
    from .data.base import loader_names
    if suite.dataset.loader not in loader_names():
        raise SuiteError(f"{path}: dataset.loader: unknown loader {suite.dataset.loader!r}; "
                         f"known: {', '.join(loader_names())}")
    from .metrics import METRICS
    for i, name in enumerate(suite.metrics):
        if name not in METRICS:
            raise SuiteError(f"{path}: metrics[{i}]: unknown metric {name!r}; known: {', '.join(sorted(METRICS))}")
    from .beside_published import check_published
    check_published(suite, path)
    _check_subsets(suite, path, list(seen))
    return suite


def _check_subsets(suite: Suite, path: Path, labels: list[str]) -> None:
    """Each subset's discriminator is a method label of the suite, and the run has the clean input
    it is judged on."""
    for name, sub in suite.stats.subsets.items():
        where = f"{path}: stats.subsets.{name}.discriminator"
        if sub.discriminator not in labels:
            raise SuiteError(f"{where}: {sub.discriminator!r} is not a method label of this suite; "
                             f"labels: {', '.join(labels)}")
        if not suite.include_clean:
            raise SuiteError(f"{where}: the subset is the questions it answers wrong on the clean input, "
                             "and include_clean is false")


def _set_dotted(d: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
    d[keys[-1]] = value
