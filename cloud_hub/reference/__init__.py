"""Reference models built from bundled data: digits-edge, digits-cloud, mobilenetv2-speed."""

from .builder import MODEL_NAMES, BuildReport, build_reference
from .cache import reference_models

__all__ = ["MODEL_NAMES", "BuildReport", "build_reference", "reference_models"]
