"""A suite's `dataset:` section -> its examples, with the one mapping of loader errors to the
line a user reads (`<suite>: dataset.options: ...`), shared by a run and `--check`."""
from __future__ import annotations

import contextlib
import inspect
from pathlib import Path

from ..errors import UserError
from .base import Example, get_loader, load_examples
from .sources import DataMissing
from .validate import validate_examples


def loader_kwargs(spec) -> dict:
    """The loader's keyword arguments for a `DatasetCfg`: its options, split, limit and source."""
    kwargs = dict(spec.options)
    kwargs.update(split=spec.split, limit=spec.limit)
    if spec.source is not None:
        kwargs["source"] = spec.source
    return kwargs


@contextlib.contextmanager
def dataset_errors(where: Path, missing_is_error: bool = True):
    """Loader errors as one UserError line naming `where` and the field: TypeError (options the
    loader does not take), DataMissing (with `missing_is_error`; else it propagates), ValueError
    and FileNotFoundError (malformed or missing files)."""
    try:
        yield
    except TypeError as e:
        raise UserError(f"{where}: dataset.options: {e}") from None
    except DataMissing as e:
        if not missing_is_error:
            raise
        raise UserError(f"{where}: dataset.source: {e}") from None
    except (ValueError, FileNotFoundError) as e:
        raise UserError(f"{where}: dataset: {e}") from None


def load_dataset(spec, where: Path, validate: bool = True, missing_is_error: bool = True) -> list[Example]:
    """The examples of a `DatasetCfg` (checked by `validate_examples` unless `validate` is off)."""
    with dataset_errors(where, missing_is_error):
        examples = load_examples(spec.loader, **loader_kwargs(spec))
        return validate_examples(examples) if validate else examples


def check_options(spec, where: Path) -> None:
    """The loader's signature accepts the suite's dataset options (checked without reading data)."""
    try:
        inspect.signature(get_loader(spec.loader)).bind(**loader_kwargs(spec))
    except TypeError as e:
        raise UserError(f"{where}: dataset.options: {e}") from None
