"""The Keras models behind the reference artifacts.

``digits-edge`` is sized for a Raspberry Pi (a few thousand weights);
``digits-cloud`` is a much wider network for the offload server;
``mobilenetv2-speed`` has random weights and exists only to measure speed.
"""

from __future__ import annotations

from typing import Any


def digits_edge(keras: Any) -> Any:
    layers = keras.layers
    image = keras.Input((8, 8, 1), name="image")
    h = layers.Conv2D(16, 3, padding="same", activation="relu")(image)
    h = layers.MaxPooling2D()(h)
    h = layers.Conv2D(32, 3, padding="same", activation="relu")(h)
    h = layers.MaxPooling2D()(h)
    h = layers.Flatten()(h)
    h = layers.Dense(10)(h)
    out = layers.Softmax(name="probabilities")(h)
    return keras.Model(image, out, name="digits_edge")


def digits_cloud(keras: Any) -> Any:
    layers = keras.layers
    image = keras.Input((8, 8, 1), name="image")
    h = layers.Conv2D(64, 3, padding="same", activation="relu")(image)
    h = layers.Conv2D(64, 3, padding="same", activation="relu")(h)
    h = layers.MaxPooling2D()(h)
    h = layers.Conv2D(128, 3, padding="same", activation="relu")(h)
    h = layers.Conv2D(128, 3, padding="same", activation="relu")(h)
    h = layers.Flatten()(h)
    h = layers.Dropout(0.3)(h)
    h = layers.Dense(256, activation="relu")(h)
    h = layers.Dropout(0.3)(h)
    h = layers.Dense(10)(h)
    out = layers.Softmax(name="probabilities")(h)
    return keras.Model(image, out, name="digits_cloud")


def mobilenetv2_speed(keras: Any) -> Any:
    return keras.applications.MobileNetV2(
        input_tensor=keras.Input((224, 224, 3), name="image"),
        weights=None,
        classes=1000,
        name="mobilenetv2_speed",
    )
