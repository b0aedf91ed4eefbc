"""``cloud-hub models build-reference``: seeded, repeatable, with cards and a table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.model_card import read_card, sha256_file

pytestmark = pytest.mark.slow


def build(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "cloud_hub.cli",
            "models",
            "build-reference",
            "--out",
            str(out),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


def test_same_seed_same_accuracies(tmp_path: Path) -> None:
    first = build(tmp_path / "a", "--models", "digits-edge", "--seed", "3")
    second = build(tmp_path / "b", "--models", "digits-edge", "--seed", "3")
    assert first.returncode == 0, first.stderr[-3000:]
    assert second.returncode == 0, second.stderr[-3000:]
    # progress while it trains, a table at the end
    assert "epoch" in first.stderr
    assert "held-out acc" in first.stdout and "digits-edge-int8.tflite" in first.stdout
    manifest_a = json.loads((tmp_path / "a" / "manifest.json").read_text())
    manifest_b = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert [m["format"] for m in manifest_a] == ["onnx-fp32", "onnx-int8", "tflite-int8"]
    assert [m["heldout_accuracy"] for m in manifest_a] == [
        m["heldout_accuracy"] for m in manifest_b
    ]


def test_cards_describe_each_artifact(reference_dir: Path) -> None:
    manifest = json.loads((reference_dir / "manifest.json").read_text())
    assert {m["model"] for m in manifest} == {"digits-edge", "digits-cloud", "mobilenetv2-speed"}
    for entry in manifest:
        artifact = reference_dir / entry["file"]
        card = read_card(artifact)
        assert card is not None, artifact
        assert card.sha256 == sha256_file(artifact)
        assert card.bytes == artifact.stat().st_size
        assert card.inputs[0].name == "image" and card.outputs[0].name == "probabilities"
        assert card.preprocessing["layout"] == "NHWC"
        assert card.build["tool"] == "cloud-hub models build-reference"
        if card.name.startswith("digits"):
            assert card.labels == [str(d) for d in range(10)]
            assert 0.9 < card.metrics["heldout_accuracy"] <= 1.0


def test_unknown_model_name_is_one_line(tmp_path: Path) -> None:
    done = build(tmp_path, "--models", "resnet")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("cloud-hub: error: unknown reference")
