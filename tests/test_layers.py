"""The core a learner reads never leans on lab/: no core file imports it outside its command-line seam, each starts
with its docstring and its imports, and no shared file tells the objectives apart by name."""
import ast
import os

from conftest import ROOT

CORE = ["model.py", "train_ar.py", "train_diffusion.py", "trainer.py", "data.py", "config.py", "runtime.py",
        "sample.py", "prepare_data.py", "tokenizer.py", "evaluate.py", "compare.py", "downstream.py"]
SHARED = ["trainer.py", "data.py", "config.py", "runtime.py", "sample.py", "evaluate.py", "compare.py",
          "downstream.py", "model.py"]


def tree(name):
    with open(os.path.join(ROOT, name)) as f:
        return ast.parse(f.read())


def imported(node):
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        return [node.module or ""]
    return []


def is_main_block(node):
    return isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)


def test_no_core_file_imports_the_lab_except_in_its_main_block():
    for name in CORE:
        for top in tree(name).body:
            if is_main_block(top):
                continue  # the seam: `from lab.launch import train` at the bottom of a script
            for node in ast.walk(top):
                assert not any(m == "lab" or m.startswith("lab.") for m in imported(node)), f"{name} imports lab/"


def test_every_core_file_starts_with_its_docstring_then_its_imports():
    for name in CORE:
        body = tree(name).body
        assert isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant), f"{name}: no docstring"
        assert isinstance(body[1], (ast.Import, ast.ImportFrom)), f"{name}: line after the docstring is not an import"


def test_no_shared_file_compares_a_kind_by_name():
    for name in SHARED:
        for node in ast.walk(tree(name)):
            if isinstance(node, ast.Compare):
                text = ast.unparse(node)
                assert not ("'ar'" in text or "'diffusion'" in text), f"{name}: {text}"
