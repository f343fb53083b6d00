"""Never load pickles we did not write: a checker of the engine's source, and the check itself."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def unsafe_loads(source: str, where: str) -> list[str]:
    """Code that could unpickle: pickle use beyond naming its exception, torch.load without
    weights_only=True, numpy.load with allow_pickle, and the pickle-based serialisers."""
    found = []
    for node in ast.walk(ast.parse(source, where)):
        line = f"{where}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if any(module.split(".")[0] in ("dill", "cloudpickle", "joblib", "shelve", "marshal") for module in modules):
                found.append(f"{line} imports a pickle-based serialiser")
            if isinstance(node, ast.ImportFrom) and node.module == "pickle":
                if any(alias.name != "UnpicklingError" for alias in node.names):
                    found.append(f"{line} imports from pickle")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "pickle":
            if node.attr != "UnpicklingError":
                found.append(f"{line} uses pickle.{node.attr}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load":
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
            keywords = {keyword.arg: keyword.value for keyword in node.keywords}
            if owner == "torch":
                value = keywords.get("weights_only")
                if not (isinstance(value, ast.Constant) and value.value is True):
                    found.append(f"{line} calls torch.load without weights_only=True")
            if owner in ("np", "numpy"):
                value = keywords.get("allow_pickle")
                if value is not None and not (isinstance(value, ast.Constant) and value.value is False):
                    found.append(f"{line} calls numpy.load with allow_pickle")
    return found


def test_the_checker_catches_unpickling():
    bad = (
        "import pickle\nimport dill\nfrom pickle import loads\npickle.load(f)\n"
        "torch.load(p)\ntorch.load(p, weights_only=False)\nnp.load(p, allow_pickle=True)\n"
    )
    assert len(unsafe_loads(bad, "bad.py")) == 6
    good = "import pickle\nerrors = (pickle.UnpicklingError,)\ntorch.load(p, weights_only=True)\nnp.load(p)\n"
    assert unsafe_loads(good, "good.py") == []


def test_the_engine_never_unpickles():
    files = sorted((ROOT / "engine").rglob("*.py"))
    assert len(files) > 10
    problems = [problem for path in files for problem in unsafe_loads(path.read_text(), str(path.relative_to(ROOT)))]
    assert problems == []
