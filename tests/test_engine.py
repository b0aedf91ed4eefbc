"""The in-process engine: backend choice from the profile, classification, cards."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from edge_agent import Engine
from edge_agent.errors import InputError, ModelFormatError, ModelLoadError
from edge_agent.probe import RuntimeInfo
from edge_agent.profiles import load_profile


def test_engine_picks_litert_for_tflite_and_onnxruntime_for_onnx(reference_dir: Path) -> None:
    with Engine.load(
        reference_dir / "digits-edge/digits-edge-int8.tflite", profile="x86-64-cpu"
    ) as lite:
        assert lite.backend_name == "litert"
        assert lite.selection.chain[-1].chosen
    with Engine.load(
        reference_dir / "digits-edge/digits-edge-fp32.onnx", profile="x86-64-cpu"
    ) as onnx:
        assert onnx.backend_name == "onnxruntime"
        # x86-64-cpu prefers litert, which cannot load ONNX: the chain says so.
        assert "litert: skipped (does not load onnx models)" in onnx.selection.explain()


def test_classify_uses_the_card_labels(
    reference_dir: Path, heldout: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = heldout
    with Engine.load(
        reference_dir / "digits-edge/digits-edge-int8.onnx", profile="x86-64-cpu"
    ) as engine:
        assert engine.card is not None and engine.card.name == "digits-edge"
        results = engine.classify(x[:20], top_k=3)
        single = engine.classify(x[0])  # no batch dimension: added
    assert len(results) == 20 and len(single) == 1
    assert sum(r.classes[0] == t for r, t in zip(results, y[:20], strict=True)) >= 18
    first = results[0]
    assert first.labels[0] == str(first.classes[0])
    assert first.confidence == max(first.probabilities)
    assert list(first.probabilities) == sorted(first.probabilities, reverse=True)


def test_missing_runtime_gives_the_chain_in_the_error(reference_dir: Path) -> None:
    nothing = {
        "onnxruntime": RuntimeInfo("onnxruntime", True, providers=("CPUExecutionProvider",)),
        "litert": RuntimeInfo("litert", False, "ai_edge_litert is not installed"),
        "tensorrt": RuntimeInfo("tensorrt", False, "not installed"),
    }
    with pytest.raises(ModelFormatError) as info:
        Engine.load(
            reference_dir / "digits-edge/digits-edge-int8.tflite",
            profile="x86-64-cpu",
            runtimes=nothing,
        )
    message = str(info.value)
    assert "no backend here can run tflite models" in message
    assert "litert: skipped (ai_edge_litert is not installed)" in message
    assert "onnxruntime: skipped (does not load tflite models)" in message


def test_model_over_the_profile_size_limit_is_refused(reference_dir: Path) -> None:
    tiny = dataclasses.replace(load_profile("x86-64-cpu"), max_model_bytes=1000)
    with pytest.raises(ModelLoadError, match="over profile x86-64-cpu's max_model_bytes"):
        Engine.load(reference_dir / "digits-edge/digits-edge-fp32.onnx", profile=tiny)


def test_classify_rejects_wrong_shapes(reference_dir: Path) -> None:
    with (
        Engine.load(reference_dir / "digits-edge/digits-edge-fp32.onnx", profile="x86-64-cpu") as e,
        pytest.raises(InputError, match="shape"),
    ):
        e.classify(np.zeros((2, 3), np.float32))


def test_engine_threads_are_capped_by_the_cores_here(reference_dir: Path) -> None:
    import os

    with Engine.load(
        reference_dir / "digits-edge/digits-edge-fp32.onnx", profile="x86-64-nvidia-gpu"
    ) as engine:
        profile_threads = engine.profile.intra_op_threads
        assert engine.backend.options.intra_op_threads == min(profile_threads, os.cpu_count() or 1)
