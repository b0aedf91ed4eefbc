"""Turning a trained Keras model into the artifacts devices run.

- ONNX fp32 through Keras' tf2onnx export, with the tensors renamed to the
  model's own names and the batch dimension named ``batch``;
- ONNX int8 by static QDQ quantization (ONNX Runtime), calibrated on training
  data, symmetric activations so TensorRT can run it too;
- TFLite full-integer int8 (int8 inputs and outputs) through TFLiteConverter,
  and TFLite fp32 where a speed comparison needs it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence what TensorFlow and its converters print on fds 1 and 2.

    The captured text is printed if the block fails, so nothing useful is lost.
    """
    with tempfile.TemporaryFile(mode="w+b") as sink:
        saved = os.dup(1), os.dup(2)
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield
        except BaseException:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            sink.seek(0)
            os.write(2, sink.read()[-20000:])
            raise
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def export_onnx(model: Any, path: Path, output_name: str) -> None:
    import onnx

    # Keras exports only a model that has been called once. (It warns that a bare tensor
    # is not the dict structure of named inputs; for one input they are the same.)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model(np.zeros((1, *model.inputs[0].shape[1:]), dtype=np.float32))
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.onnx"
        with quiet():
            model.export(str(raw), format="onnx", verbose=False)
        proto = onnx.load(str(raw))
    _rename_output(proto.graph, output_name)
    for value in [*proto.graph.input, *proto.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].dim_value:
            dims[0].dim_param = "batch"
    proto.doc_string = f"edgeloop reference model {model.name}"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def _rename_output(graph: Any, new_name: str) -> None:
    old_name = graph.output[0].name
    if old_name == new_name:
        return
    for node in graph.node:
        for i, name in enumerate(node.output):
            if name == old_name:
                node.output[i] = new_name
        for i, name in enumerate(node.input):
            if name == old_name:
                node.input[i] = new_name
    graph.output[0].name = new_name


def quantize_onnx_int8(src: Path, dst: Path, calibration: np.ndarray, input_name: str) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._rows = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            row = next(self._rows, None)
            return None if row is None else {input_name: row[np.newaxis]}

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(dst),
            _Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            extra_options={"ActivationSymmetric": True},
        )


def _converter(model: Any, output_name: str, workdir: Path) -> Any:
    """A converter whose signature names the tensors as the ONNX export does."""
    import keras
    import tensorflow as tf

    spec = tf.TensorSpec([None, *model.inputs[0].shape[1:]], tf.float32, name="image")
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name="serving_default",
        fn=lambda image: {output_name: model(image, training=False)},
        input_signature=[spec],
    )
    saved = workdir / "saved_model"
    with quiet():
        archive.write_out(str(saved), verbose=False)
    return tf.lite.TFLiteConverter.from_saved_model(str(saved))


def convert_tflite_fp32(model: Any, path: Path, output_name: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        converter = _converter(model, output_name, Path(tmp))
        with quiet():
            flatbuffer = converter.convert()
    path.write_bytes(flatbuffer)


def convert_tflite_int8(model: Any, path: Path, calibration: np.ndarray, output_name: str) -> None:
    import tensorflow as tf

    def representative() -> Iterator[list[np.ndarray]]:
        for row in calibration:
            yield [row[np.newaxis]]

    with tempfile.TemporaryDirectory() as tmp:
        converter = _converter(model, output_name, Path(tmp))
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
        with quiet():
            flatbuffer = converter.convert()
    path.write_bytes(flatbuffer)
