"""The optimized-graph cache: made once in a child process, same answers, survives damage."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from edge_agent.backends.base import BackendOptions
from edge_agent.backends.onnx_runtime import OnnxRuntimeBackend
from edge_agent.backends.ort_optimized import FOLDER, cached_path, optimized_model

INT8 = Path("digits-edge", "digits-edge-int8.onnx")


def _run(model: Path, cache: Path | None, x: np.ndarray) -> np.ndarray:
    with OnnxRuntimeBackend(model, BackendOptions(cache_dir=cache)) as backend:
        name = backend.inputs[0].name
        return next(iter(backend.run({name: x}).values()))


def test_loading_with_a_cache_writes_the_optimized_graph_once_and_answers_the_same(
    reference_dir: Path, heldout: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    model = reference_dir / INT8
    x = heldout[0][:64].astype(np.float32)
    plain = _run(model, None, x)

    first = _run(model, tmp_path, x)
    written = list((tmp_path / FOLDER).iterdir())
    assert [p.name for p in written] == [cached_path(model, tmp_path).name]
    stamp = written[0].stat().st_mtime_ns
    second = _run(model, tmp_path, x)

    assert written[0].stat().st_mtime_ns == stamp  # reused, not rewritten
    np.testing.assert_allclose(first, plain, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(second, plain, rtol=1e-5, atol=1e-6)


def test_a_changed_model_gets_its_own_cache_entry(reference_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    shutil.copyfile(reference_dir / INT8, model)
    before = optimized_model(model, tmp_path / "cache")
    shutil.copyfile(reference_dir / "digits-edge" / "digits-edge-fp32.onnx", model)
    after = optimized_model(model, tmp_path / "cache")
    assert before is not None and after is not None and before != after


def test_a_damaged_cache_file_is_dropped_and_the_model_loads_from_the_original(
    reference_dir: Path,
    heldout: tuple[np.ndarray, np.ndarray],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = reference_dir / INT8
    x = heldout[0][:8].astype(np.float32)
    target = cached_path(model, tmp_path)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"not an onnx graph")

    answer = _run(model, tmp_path, x)

    np.testing.assert_allclose(answer, _run(model, None, x), rtol=1e-5, atol=1e-6)
    assert not target.exists()
    assert "dropping its optimized graph" in caplog.text


def test_a_model_the_child_cannot_optimize_loads_as_before_and_fails_the_same_way(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\x07garbage that is no model")
    assert optimized_model(broken, tmp_path / "cache") is None
    assert "graph optimization ahead of load failed" in caplog.text
    assert not list((tmp_path / "cache" / FOLDER).glob("*.onnx"))
