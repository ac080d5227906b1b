"""The house rules, checked on the source: no module imports another module's private (`_name`)
names, and the only import circles are registries importing their members."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# registry <-> its members (each member imports the registry's decorator; the registry imports
# its members so that they register)
REGISTRY_CIRCLES = [
    {"robust_atp.data.base", "robust_atp.data.coco", "robust_atp.data.easy_vqa", "robust_atp.data.gqa",
     "robust_atp.data.mmbench", "robust_atp.data.mme", "robust_atp.data.pope", "robust_atp.data.scienceqa",
     "robust_atp.data.shapes", "robust_atp.data.shapes_pope", "robust_atp.data.textvqa", "robust_atp.data.vqav2"},
    {"robust_atp.prune.methods", "robust_atp.prune.peers"},
    {"robust_atp.perturb.text", "robust_atp.perturb.paraphrase"},
    # load_adapter imports llava to register it; llava builds on hf_base, which uses base's helpers
    {"robust_atp.models.base", "robust_atp.models.hf_base", "robust_atp.models.llava"},
]


def _modules(*dirs: str) -> dict[str, Path]:
    out = {}
    for d in dirs:
        for p in (ROOT / d).rglob("*.py"):
            parts = list(p.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = p
    return out


def _target(mod: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = mod.split(".")[: None if path.name == "__init__.py" else -1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _graph_and_private():
    mods = _modules("robust_atp", "tests", "benchmarks")
    graph, private = {m: set() for m in mods}, []
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                target = _target(mod, path, node)
                for a in node.names:
                    sub = f"{target}.{a.name}"
                    if sub in mods:
                        graph[mod].add(sub)
                        aliases[a.asname or a.name] = sub
                        continue
                    if target in mods:
                        graph[mod].add(target)
                    if a.name.startswith("_") and target.split(".")[0] in ("robust_atp", "tests"):
                        private.append(f"{path.relative_to(ROOT)}:{node.lineno}: from {target} import {a.name}")
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name in mods:
                        graph[mod].add(a.name)
                        aliases[a.asname or a.name] = a.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                private.append(f"{path.relative_to(ROOT)}:{node.lineno}: {aliases[node.value.id]}.{node.attr}")
    return graph, private


def _circles(graph: dict[str, set]) -> list[set]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = set()
                while True:
                    x = stack.pop()
                    on.discard(x)
                    comp.add(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    out.append(comp)
    return out


def test_no_module_imports_a_private_name_of_another():
    _, private = _graph_and_private()
    assert private == []


def test_the_only_import_circles_are_registries():
    graph, _ = _graph_and_private()
    circles = _circles(graph)
    assert [c for c in circles if c not in REGISTRY_CIRCLES] == []
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]  # the check sees one
