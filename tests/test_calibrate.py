"""Calibrating the cascade threshold: the curve, the choice, and ``edge-agent calibrate``."""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_agent.cli import main
from edge_agent.offload.calibrate import (
    CalibrationError,
    CurvePoint,
    choose_for_accuracy,
    choose_for_offload,
    curve,
)
from edge_agent.offload.scores import SCORES, Policy, confidence

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

# Six inputs; 0.5 is tied. Local right on 0, 2, 4, 5; cloud right on all but 2.
CONF = np.array([0.9, 0.2, 0.5, 0.5, 0.7, 0.9])
LOCAL = np.array([1, 0, 2, 3, 1, 0])
LABELS = np.array([1, 1, 2, 0, 1, 0])
CLOUD = np.array([1, 1, 0, 0, 1, 0])


def _points() -> list[CurvePoint]:
    return curve(CONF, LOCAL, LABELS, CLOUD)


def test_curve_has_one_point_per_distinct_confidence_plus_offload_all() -> None:
    got = [
        (p.threshold, p.offloaded, p.local_correct, p.kept, p.cascade_correct) for p in _points()
    ]
    assert got == [
        (0.2, 0, 4, 6, 4),  # nothing offloaded: local-only
        (0.5, 1, 4, 5, 5),  # the 0.2 input (wrong locally, right in the cloud) goes
        (0.7, 3, 3, 3, 5),  # both 0.5 inputs go together: ties are never split
        (0.9, 4, 2, 2, 5),
        (1.0, 6, 0, 0, 5),  # every confidence < 1, so 1.0 offloads all: cloud-only
    ]
    last = _points()[-1]
    assert math.isnan(last.local_accuracy) and last.to_dict()["local_accuracy"] is None
    assert last.cascade_accuracy == pytest.approx(5 / 6)


def test_curve_without_cloud_predictions_has_no_cascade_accuracy() -> None:
    points = curve(CONF, LOCAL, LABELS)
    assert all(p.cascade_correct is None and p.cascade_accuracy is None for p in points)
    assert [p.local_accuracy for p in points[:2]] == [4 / 6, 4 / 5]


def test_a_confidence_of_one_keeps_the_curve_inside_zero_to_one() -> None:
    points = curve(np.array([1.0, 1.0, 0.4]), np.array([0, 0, 0]), np.array([0, 1, 0]))
    assert [(p.threshold, p.offloaded) for p in points] == [(0.4, 0), (1.0, 1)]


@pytest.mark.parametrize(
    ("target", "threshold", "offloaded"),
    [
        (0.0, 0.2, 0),
        (0.1, 0.2, 0),
        (0.2, 0.5, 1),  # 1/6 <= 0.2
        (0.4, 0.5, 1),  # 3/6 > 0.4 and the tie cannot be split
        (0.5, 0.7, 3),  # exactly 3/6 is allowed
        (0.99, 0.9, 4),
        (1.0, 1.0, 6),
    ],
)
def test_target_offload_picks_the_largest_threshold_within_budget(
    target: float, threshold: float, offloaded: int
) -> None:
    chosen = choose_for_offload(_points(), target)
    assert (chosen.threshold, chosen.offloaded) == (threshold, offloaded)


@pytest.mark.parametrize(
    ("target", "threshold", "offloaded"),
    [
        (0.0, 0.2, 0),
        (0.6, 0.2, 0),  # 4/6 already
        (0.8, 0.5, 1),  # exactly 4/5 meets 0.8
        (0.81, 0.7, 3),
        (1.0, 0.7, 3),  # the smallest offload with 100%, not the last
    ],
)
def test_target_accuracy_picks_the_smallest_offload_that_reaches_it(
    target: float, threshold: float, offloaded: int
) -> None:
    chosen = choose_for_accuracy(_points(), target)
    assert (chosen.threshold, chosen.offloaded) == (threshold, offloaded)


def test_target_accuracy_takes_the_first_crossing_even_when_accuracy_dips_later() -> None:
    # local accuracy by offload: 2/4, 2/3 (meets 0.6), 1/2 (dips), 1/1
    points = curve(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0, 1, 1, 1]), np.array([1, 1, 0, 1]))
    assert choose_for_accuracy(points, 0.6).threshold == 0.2


def test_unreachable_accuracy_names_the_best_reachable() -> None:
    points = curve(np.array([0.1, 0.5, 0.9]), np.array([0, 1, 0]), np.array([1, 1, 1]))
    with pytest.raises(CalibrationError) as caught:
        choose_for_accuracy(points, 0.9)
    message = str(caught.value)
    assert "0.9000" in message
    assert "best reachable is 0.5000" in message
    assert "threshold 0.5" in message and "offloading 0.3333" in message


@pytest.mark.parametrize("target", [-0.1, 1.5, math.nan])
def test_targets_outside_zero_to_one_are_refused(target: float) -> None:
    with pytest.raises(CalibrationError, match="not a fraction"):
        choose_for_offload(_points(), target)
    with pytest.raises(CalibrationError, match="not a fraction"):
        choose_for_accuracy(_points(), target)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((CONF, LOCAL[:5], LABELS), "differ in length"),
        ((CONF.reshape(2, 3), LOCAL, LABELS), "must be 1-D"),
        ((np.array([]), np.array([]), np.array([])), "no samples"),
        ((CONF + 0.5, LOCAL, LABELS), r"in \[0, 1\]"),
        ((np.full(6, np.nan), LOCAL, LABELS), "finite"),
    ],
)
def test_inconsistent_inputs_are_refused(
    args: tuple[np.ndarray, np.ndarray, np.ndarray], message: str
) -> None:
    with pytest.raises(CalibrationError, match=message):
        curve(*args)


def test_calibration_errors_are_edge_agent_and_value_errors() -> None:
    from edge_agent.errors import EdgeAgentError

    assert issubclass(CalibrationError, EdgeAgentError)
    assert issubclass(CalibrationError, ValueError)


@pytest.mark.parametrize("score", SCORES)
def test_each_point_offloads_what_the_runtime_policy_offloads(score: str) -> None:
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(200, 5)) * 3
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    probabilities = np.round(probabilities, 2)  # coarse values make ties, as int8 does
    labels = rng.integers(0, 5, size=200)
    points = curve(confidence(probabilities, score), probabilities.argmax(axis=1), labels)
    for point in points:
        hard = Policy(score, point.threshold).is_hard(probabilities)
        assert int(hard.sum()) == point.offloaded
    offloads = [p.offloaded for p in points]
    assert offloads == sorted(set(offloads))  # strictly increasing


# -- the command ---------------------------------------------------------------------------

EDGE = Path("digits-edge", "digits-edge-int8.onnx")
VALIDATION = Path("data", "digits-validation.npz")


def _calibrate(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["calibrate", *args, "--profile", "x86-64-cpu"])
    out, err = capsys.readouterr()
    return code, out, err


def _pasted_config(stdout: str) -> dict[str, object]:
    block = stdout.split("# paste into the agent config:\n", 1)[1]
    return tomllib.loads(block)


def test_target_offload_prints_config_lines_that_round_trip(
    reference_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, data = str(reference_dir / EDGE), str(reference_dir / VALIDATION)
    code, out, err = _calibrate(capsys, model, "--data", data, "--target-offload", "0.2")
    assert code == 0, err
    assert '[offload]\nscore = "max_probability"\nthreshold = ' in out
    assert "270 samples" in out and "\n>" in out  # the chosen row is marked
    section = _pasted_config(out)["offload"]
    assert isinstance(section, dict) and section["score"] == "max_probability"
    threshold = section["threshold"]
    assert isinstance(threshold, float)

    code, out, err = _calibrate(capsys, model, "--data", data, "--target-offload", "0.2", "--json")
    assert code == 0, err
    payload = json.loads(out)
    assert payload["chosen"]["threshold"] == threshold
    assert payload["chosen"]["offload_fraction"] <= 0.2
    fractions = [p["offload_fraction"] for p in payload["curve"]]
    later = [
        f for p, f in zip(payload["curve"], fractions, strict=True) if p["threshold"] > threshold
    ]
    assert all(f > 0.2 for f in later)  # the largest threshold within budget
    assert payload["config"].splitlines()[0] == "[offload]"


def test_target_accuracy_picks_the_first_point_that_reaches_it(
    reference_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, data = str(reference_dir / EDGE), str(reference_dir / VALIDATION)
    code, out, err = _calibrate(
        capsys, model, "--data", data, "--target-accuracy", "0.995", "--score", "margin", "--json"
    )
    assert code == 0, err
    payload = json.loads(out)
    chosen = payload["chosen"]
    assert payload["score"] == "margin" and chosen["local_accuracy"] >= 0.995
    before = [p for p in payload["curve"] if p["offloaded"] < chosen["offloaded"]]
    assert before and all(p["local_accuracy"] < 0.995 for p in before)
    assert 'score = "margin"' in payload["config"]


def test_unreachable_accuracy_is_a_one_line_error(
    reference_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with np.load(reference_dir / VALIDATION) as archive:
        x, y = archive["x"], archive["y"]
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, x=x, y=(y + 1) % 10)  # every label off by one
    code, out, err = _calibrate(
        capsys, str(reference_dir / EDGE), "--data", str(wrong), "--target-accuracy", "0.5"
    )
    assert code == 1 and out == ""
    assert err.startswith("edge-agent: error: no threshold reaches local accuracy 0.5000")
    # A few wrong local answers happen to equal the shifted labels: near zero, not zero.
    assert re.search(r"best reachable is 0\.0\d{3} \(threshold [0-9.]+, offloading", err), err
    assert len(err.strip().splitlines()) == 1


def _bad_data(reference_dir: Path, tmp_path: Path) -> dict[str, tuple[Path, str]]:
    with np.load(reference_dir / VALIDATION) as archive:
        x, y = archive["x"], archive["y"]
    files = {
        "keys": dict(images=x, labels=y),
        "one key": dict(x=x),
        "rows": dict(x=x[:10], y=y[:9]),
        "shape": dict(x=np.zeros((4, 28, 28, 1), np.float32), y=y[:4]),
        "labels": dict(x=x[:4], y=np.array([0, 1, 2, 10])),
        "float labels": dict(x=x[:4], y=np.array([0.0, 1.0, 2.0, 3.0])),
    }
    expected = {
        "keys": "missing key(s) 'x', 'y' (found 'images', 'labels')",
        "one key": "missing key(s) 'y' (found 'x')",
        "rows": "'x' has shape [10, 8, 8, 1] but 'y' has 9 labels",
        "shape": "'x' rows have shape [28, 28, 1] but the model's input 'image' takes [8, 8, 1]",
        "labels": "labels span 0..10 but the model has 10 classes",
        "float labels": "'y' must be 1-D integer labels",
    }
    out: dict[str, tuple[Path, str]] = {}
    for name, arrays in files.items():
        path = tmp_path / f"{name.replace(' ', '-')}.npz"
        np.savez(path, **arrays)
        out[name] = (path, expected[name])
    out["missing file"] = (tmp_path / "nope.npz", "no such data file")
    return out


@pytest.mark.parametrize(
    "case", ["keys", "one key", "rows", "shape", "labels", "float labels", "missing file"]
)
def test_bad_data_is_a_one_line_error_naming_the_problem(
    reference_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    path, expected = _bad_data(reference_dir, tmp_path)[case]
    code, out, err = _calibrate(
        capsys, str(reference_dir / EDGE), "--data", str(path), "--target-offload", "0.2"
    )
    assert code == 1 and out == ""
    assert err.startswith("edge-agent: error: ") and expected in err, err
    assert len(err.strip().splitlines()) == 1


def test_a_model_whose_card_is_not_a_classifier_is_refused(
    reference_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / EDGE.name
    shutil.copy(reference_dir / EDGE, model)
    card = json.loads((reference_dir / f"{EDGE}.card.json").read_text())
    card["task"] = "detection"
    (tmp_path / f"{EDGE.name}.card.json").write_text(json.dumps(card))
    code, _, err = _calibrate(
        capsys, str(model), "--data", str(reference_dir / VALIDATION), "--target-offload", "0.2"
    )
    assert code == 1
    assert "calibrate needs a classifier; the model card says 'detection'" in err


def test_one_target_is_required_and_help_explains(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["calibrate", "model.onnx", "--data", "v.npz"])
    assert exited.value.code == 2
    assert "--target-offload" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["calibrate", "m.onnx", "--data", "v.npz", "--target-offload", "0.1",
              "--target-accuracy", "0.9"])  # fmt: skip
    assert exited.value.code == 2
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["calibrate", "--help"])
    text = capsys.readouterr().out
    for needle in ("--target-offload", "--target-accuracy", "[offload]", "'x'", "'y'", "margin"):
        assert needle in text
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "calibrate" in capsys.readouterr().out


# -- --write CONFIG -------------------------------------------------------------------------

EXAMPLE = Path(__file__).resolve().parent.parent / "edge_agent/service/agent.example.toml"
WRITE_CASES = {
    "replaced, comments kept": (
        '[model]\npath = "m.onnx"\n\n[offload]\nurl = "h:1"\n'
        'score = "margin"   # was margin\nthreshold = 0.5 # old\n\n[ota]\nenabled = false\n',
        '[model]\npath = "m.onnx"\n\n[offload]\nurl = "h:1"\n'
        'score = "entropy"  # was margin\nthreshold = 0.75  # old\n\n[ota]\nenabled = false\n',
    ),
    "added at the end of the table": (
        '[offload]\nurl = "h:1"\n\n\n[ota]\nenabled = false',
        '[offload]\nurl = "h:1"\nscore = "entropy"\nthreshold = 0.75\n\n\n[ota]\nenabled = false\n',
    ),
    "a new table": (
        '[model]\npath = "m.onnx"',
        '[model]\npath = "m.onnx"\n\n[offload]\nscore = "entropy"\nthreshold = 0.75\n',
    ),
    "a hash inside a string is not a comment": (
        "[offload]\nscore = 'a#b' # c\n",
        '[offload]\nscore = "entropy"  # c\nthreshold = 0.75\n',
    ),
}


@pytest.mark.parametrize("case", WRITE_CASES)
def test_set_offload_keys_edits_only_the_offload_table(case: str) -> None:
    from edge_agent.offload.config_write import set_offload_keys

    before, after = WRITE_CASES[case]
    assert set_offload_keys(before, {"score": "entropy", "threshold": 0.75}) == after


@pytest.mark.parametrize(
    "text", ["offload.threshold = 0.5\n", "offload = {threshold = 0.5}\n", "[offload\n"]
)
def test_set_offload_keys_refuses_what_it_cannot_edit_safely(text: str) -> None:
    from edge_agent.offload.config_write import set_offload_keys

    with pytest.raises(CalibrationError):
        set_offload_keys(text, {"score": "entropy", "threshold": 0.75})


def test_write_sets_the_threshold_the_agent_reads(
    reference_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from edge_agent.config import load_config

    config = tmp_path / "agent.toml"
    config.write_text(EXAMPLE.read_text())
    model, data = str(reference_dir / EDGE), str(reference_dir / VALIDATION)
    args = ("--data", data, "--target-offload", "0.1", "--score", "margin", "--write", str(config))
    code, out, err = _calibrate(capsys, model, *args, "--json")
    assert code == 0, err
    chosen = json.loads(out)["chosen"]["threshold"]
    section = load_config(config).offload
    assert section.score == "margin" and section.threshold == chosen
    assert config.read_text().count("[offload]") == 1
    # Everything else in the file is as it was.
    kept = [
        line
        for line in EXAMPLE.read_text().splitlines()
        if not line.startswith(("score", "threshold"))
    ]
    assert [
        line
        for line in config.read_text().splitlines()
        if not line.startswith(("score", "threshold"))
    ] == kept

    code, out, err = _calibrate(capsys, model, "--data", data, "--target-offload", "0.1",
                                "--write", str(tmp_path / "none.toml"))  # fmt: skip
    assert code == 1 and "none.toml: no such config file to write to" in err
