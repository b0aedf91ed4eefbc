"""Packaging: what ships, what the device installs, and the agent/hub boundary."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_edge_agent_source_never_imports_cloud_hub() -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(n for n in _imports(path) if n.startswith("cloud_hub"))
        for path in (ROOT / "edge_agent").rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_importing_every_agent_module_loads_no_hub_module() -> None:
    modules = sorted(
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for path in (ROOT / "edge_agent").rglob("*.py")
        if "tensorrt" not in path.name  # needs the TensorRT SDK to import
    )
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('cloud_hub', 'tensorflow', 'fastapi', 'sqlalchemy'))\n"
        "print(bad)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert done.stdout.strip() == "[]"


def test_every_package_in_the_tree_is_listed_in_pyproject() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    mapped = {v: k for k, v in config["package-dir"].items() if k}
    found = set()
    for top in ("edge_agent", "cloud_hub", "device_profiles"):
        for init in (ROOT / top).rglob("__init__.py"):
            folder = str(init.parent.relative_to(ROOT))
            found.add(mapped.get(folder, folder.replace("/", ".")))
    assert found == listed


def _copy_tree(target: Path) -> Path:
    ignore = shutil.ignore_patterns(
        ".git", "__pycache__", "*.egg-info", "build", "dist", ".*_cache", ".venv", "artifacts"
    )
    shutil.copytree(ROOT, target, ignore=ignore)
    return target


@pytest.mark.slow
def test_plain_install_gives_a_working_light_agent(tmp_path: Path, reference_dir: Path) -> None:
    """``pip install .`` in a fresh venv: a working edge-agent with no TF, FastAPI, SQLAlchemy."""
    source = _copy_tree(tmp_path / "src")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    install = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert install.returncode == 0, install.stderr[-4000:]
    clean_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    probe = subprocess.run(
        [
            str(python),
            "-c",
            "import importlib.util as u; print([m for m in ('tensorflow', 'fastapi', 'sqlalchemy', "
            "'keras', 'ai_edge_litert') if u.find_spec(m)])",
        ],
        capture_output=True,
        text=True,
        check=True,
        env=clean_env,
        cwd=tmp_path,
    )
    assert probe.stdout.strip() == "[]"
    agent = env_dir / "bin" / "edge-agent"
    model = reference_dir / "digits-edge" / "digits-edge-int8.onnx"
    sample = reference_dir / "data" / "digit-sample.npy"
    done = subprocess.run(
        [str(agent), "infer", str(model), "--input", str(sample), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=clean_env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert '"confidence"' in done.stdout
    doctor = subprocess.run(
        [
            str(agent),
            "doctor",
            "--model",
            str(reference_dir / "digits-edge/digits-edge-int8.tflite"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=clean_env,
        cwd=tmp_path,
    )
    # Without the [tflite] extra the agent explains why it cannot run a TFLite model.
    assert doctor.returncode == 1
    assert "pip install 'edgeloop[tflite]'" in doctor.stdout
    # The profiles ship inside the wheel.
    listed = subprocess.run(
        [str(python), "-c", "from edge_agent.profiles import list_profiles as l; print(l())"],
        capture_output=True,
        text=True,
        check=True,
        env=clean_env,
        cwd=tmp_path,
    )
    assert "jetson-orin-nano" in listed.stdout and "raspberry-pi-coral-usb" in listed.stdout
