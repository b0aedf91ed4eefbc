"""The ``edge-agent`` command line, run as a user runs it: a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def edge_agent(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


def test_help_explains_the_commands() -> None:
    done = edge_agent("--help")
    assert done.returncode == 0
    assert "doctor" in done.stdout and "infer" in done.stdout
    infer_help = edge_agent("infer", "--help").stdout
    assert "--input" in infer_help and ".npy" in infer_help


@pytest.mark.parametrize(
    "model", ["digits-edge/digits-edge-int8.tflite", "digits-edge/digits-edge-int8.onnx"]
)
def test_infer_prints_top_classes_confidence_and_latency(reference_dir: Path, model: str) -> None:
    sample = reference_dir / "data" / "digit-sample.npy"
    truth = int(np.load(reference_dir / "data" / "digits-heldout.npz")["y"][0])
    text = edge_agent("infer", str(reference_dir / model), "--input", str(sample))
    assert text.returncode == 0, text.stderr
    assert "latency" in text.stdout and "confidence" in text.stdout
    as_json = edge_agent(
        "infer", str(reference_dir / model), "--input", str(sample), "--json", "--top", "2"
    )
    payload = json.loads(as_json.stdout)
    assert payload["latency_ms"] > 0
    (result,) = payload["results"]
    assert len(result["top"]) == 2
    assert result["top"][0]["class"] == truth
    assert 0.5 < result["confidence"] <= 1.0


def _broken(reference_dir: Path, tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    model = reference_dir / "digits-edge" / "digits-edge-int8.onnx"
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(model.read_bytes()[:500])
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(b"\0\0\0\0TFL3" + bytes(range(256)) * 4)
    unknown = tmp_path / "model.pt"
    unknown.write_bytes(b"pickle")
    good_input = tmp_path / "good.npy"
    np.save(good_input, np.zeros((1, 8, 8, 1), np.float32))
    wrong_shape = tmp_path / "shape.npy"
    np.save(wrong_shape, np.zeros((1, 28, 28, 1), np.float32))
    wrong_dtype = tmp_path / "dtype.npy"
    np.save(wrong_dtype, np.array(["a", "b"]))
    not_npy = tmp_path / "text.npy"
    not_npy.write_text("hello")
    m, g = str(model), str(good_input)
    return {
        "truncated model": ([str(truncated), "--input", g], "truncated.onnx"),
        "corrupt model": ([str(garbage), "--input", g], "garbage.tflite"),
        "unknown format": ([str(unknown), "--input", g], "unknown model format '.pt'"),
        "missing model": ([str(tmp_path / "nope.onnx"), "--input", g], "no such model file"),
        "wrong shape": ([m, "--input", str(wrong_shape)], "shape [1, 28, 28, 1] does not match"),
        "wrong dtype": ([m, "--input", str(wrong_dtype)], "dtype <U1 does not match"),
        "unreadable input": ([m, "--input", str(not_npy)], "not a readable .npy array"),
        "missing input": ([m, "--input", str(tmp_path / "x.npy")], "no such input file"),
    }


CASES = [
    "truncated model",
    "corrupt model",
    "unknown format",
    "missing model",
    "wrong shape",
    "wrong dtype",
    "unreadable input",
    "missing input",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_and_nonzero(reference_dir: Path, tmp_path: Path, case: str) -> None:
    args, expected = _broken(reference_dir, tmp_path)[case]
    done = edge_agent("infer", *args)
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if not line.startswith("INFO:")]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("edge-agent: error: ")
    assert expected in lines[0]
    assert "Traceback" not in done.stderr


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    model = tmp_path / "model.pt"
    model.write_bytes(b"x")
    done = edge_agent("infer", str(model), "--input", "x.npy", "--debug")
    assert done.returncode == 1
    assert "Traceback" in done.stderr


def test_doctor_reports_profile_runtimes_and_the_chain(reference_dir: Path) -> None:
    model = reference_dir / "digits-edge" / "digits-edge-int8.onnx"
    done = edge_agent("doctor", "--model", str(model), "--profile", "x86-64-cpu", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["profile"]["name"] == "x86-64-cpu"
    assert report["runtimes"]["onnxruntime"]["available"] is True
    assert report["model"]["backend"] == "onnxruntime"
    chain = report["model"]["chain"]
    assert chain[0] == {
        "backend": "litert",
        "chosen": False,
        "reason": "does not load onnx models",
    }
    assert chain[-1]["backend"] == "onnxruntime" and chain[-1]["chosen"] is True
    text = edge_agent("doctor", "--model", str(model), "--profile", "x86-64-cpu")
    assert "skipped litert: does not load onnx models" in text.stdout
    assert "chosen  onnxruntime" in text.stdout


def test_doctor_detects_this_machine_and_fails_on_a_broken_model(tmp_path: Path) -> None:
    plain = edge_agent("doctor", "--json")
    assert plain.returncode == 0
    assert json.loads(plain.stdout)["profile"]["name"]
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\x01garbage")
    done = edge_agent("doctor", "--model", str(broken))
    assert done.returncode == 1
    assert "error" in done.stdout and "broken.onnx" in done.stdout


def test_doctor_reads_a_fake_root(tmp_path: Path) -> None:
    model_file = tmp_path / "proc" / "device-tree" / "model"
    model_file.parent.mkdir(parents=True)
    model_file.write_bytes(b"Raspberry Pi 5 Model B Rev 1.0\0")
    done = edge_agent("doctor", "--root", str(tmp_path), "--json")
    assert json.loads(done.stdout)["profile"]["name"] == "raspberry-pi-5"
