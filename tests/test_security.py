"""Security: suites load as plain data only, remote code runs only when a suite asks for it,
nothing is unpickled, and paths named in data files stay inside their dataset root."""
import re
from pathlib import Path

import pytest

from robust_atp.data.sources import DataError, inside
from robust_atp.errors import SuiteError
from robust_atp.suite import ModelCfg, load_suite

PACKAGE = Path(__file__).resolve().parents[1] / "robust_atp"

UNSAFE = [
    (r"\bimport pickle\b|\bpickle\.loads?\(|\bcloudpickle\b|\bdill\b", "pickle"),
    (r"\byaml\.(unsafe_load|full_load|load_all)\(|Loader=yaml\.(Unsafe|Full)?Loader\b", "unsafe YAML loading"),
    (r"\btorch\.load\((?![^)]*weights_only=True)", "torch.load without weights_only=True"),
    (r"trust_remote_code=True", "remote code switched on in the package"),
    (r"(?<![.\w])(eval|exec)\(", "eval / exec"),
]


def test_the_package_loads_nothing_unsafely():
    found = []
    for py in sorted(PACKAGE.rglob("*.py")):
        text = py.read_text(encoding="utf-8")
        for pattern, what in UNSAFE:
            for m in re.finditer(pattern, text):
                found.append(f"{py.relative_to(PACKAGE)}:{text[:m.start()].count(chr(10)) + 1}: {what}")
        for m in re.finditer(r"yaml\.load\((.*)\)", text):
            if "Loader=StrictSafeLoader" not in m.group(1) and "SafeLoader" not in m.group(1):
                found.append(f"{py.relative_to(PACKAGE)}: yaml.load without a safe loader")
    assert found == []


def test_a_suite_cannot_build_python_objects(tmp_path):
    marker = tmp_path / "ran"
    for tag in ("!!python/object/apply:os.system", "!!python/object/new:os.system", "!!python/name:os.system"):
        p = tmp_path / "s.yaml"
        p.write_text(f"name: {tag} ['touch {marker}']\n")
        with pytest.raises(SuiteError, match="could not determine a constructor"):
            load_suite(p)
    assert not marker.exists()


@pytest.mark.parametrize("setting", [None, False, True])
def test_remote_code_only_when_the_suite_sets_it(monkeypatch, tmp_path, setting):
    import transformers

    from robust_atp.errors import UserError
    from robust_atp.models.base import load_adapter

    seen = []

    def record(path, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        raise OSError("stop here")

    monkeypatch.setattr(transformers.LlavaForConditionalGeneration, "from_pretrained", record)
    (tmp_path / "config.json").write_text("{}")
    cfg = ModelCfg(checkpoint=str(tmp_path), **({} if setting is None else {"trust_remote_code": setting}))
    with pytest.raises(UserError, match="stop here"):
        load_adapter(cfg)
    assert seen == [bool(setting)]


@pytest.mark.parametrize("name", ["../x.jpg", "a/../../x.jpg", "/etc/passwd", "..", "a/../.."])
def test_paths_from_data_files_stay_inside_the_root(tmp_path, name):
    with pytest.raises(DataError, match="path leaves the dataset root"):
        inside(tmp_path, name)


def test_paths_inside_the_root_are_kept(tmp_path):
    assert inside(tmp_path, "a/../b/c.jpg") == tmp_path / "b" / "c.jpg"
