"""``/models`` and ``/artifacts``: the model registry and its content-addressed files.

A model has versions; a version has one artifact per format (``onnx-int8``,
``tflite-int8``, ...), each with its model card. Artifacts are addressed by the sha256 of
their bytes; ``/artifacts/{sha256}/content`` streams them with ``Content-Length``, byte
ranges (resumable downloads) and ``ETag`` = the sha256, so a client can check what it got.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated

from fastapi import APIRouter, Header, Path, Response
from fastapi.responses import FileResponse

from ..errors import NotFound
from ..registry import ModelVersion
from .auth import RegistryDep
from .errors import responses
from .schemas import (
    API_PREFIX,
    NAME_PATTERN,
    SHA256_PATTERN,
    VERSION_PATTERN,
    ArtifactOut,
    ArtifactUse,
    FormatOut,
    ModelDetail,
    ModelSummary,
    ModelVersionOut,
)

router = APIRouter(tags=["models"])

ModelName = Annotated[str, Path(min_length=1, max_length=128, pattern=NAME_PATTERN)]
Version = Annotated[str, Path(min_length=1, max_length=64, pattern=VERSION_PATTERN)]
Sha256 = Annotated[str, Path(pattern=SHA256_PATTERN, description="64 lower-case hex digits")]


@router.get("/models", response_model=list[ModelSummary], summary="List models")
def list_models(registry: RegistryDep) -> list[ModelSummary]:
    by_name: dict[str, list[ModelVersion]] = {}
    for found in registry.list_models():
        by_name.setdefault(found.model, []).append(found)
    return [_summary(name, versions) for name, versions in by_name.items()]


@router.get(
    "/models/{name}",
    response_model=ModelDetail,
    summary="Show a model with every version",
    responses=responses(404, 422),
)
def get_model(registry: RegistryDep, name: ModelName) -> ModelDetail:
    return ModelDetail(name=name, versions=_versions(registry.list_models(name=name)))


@router.get(
    "/models/{name}/versions/{version}",
    response_model=ModelVersionOut,
    summary="Show a model version: every format with its artifact and card",
    responses=responses(404, 422),
)
def get_model_version(registry: RegistryDep, name: ModelName, version: Version) -> ModelVersionOut:
    found = [v for v in registry.list_models(name=name) if v.version == version]
    if not found:
        raise NotFound(f"model {name} has no version {version!r}")
    return _versions(found)[0]


@router.get(
    "/artifacts/{sha256}",
    response_model=ArtifactOut,
    summary="Show an artifact: size and the model versions that use it",
    responses=responses(404, 422),
)
def get_artifact(registry: RegistryDep, sha256: Sha256) -> ArtifactOut:
    artifact = registry.artifact(sha256)
    users = [v for v in registry.list_models() if v.sha256 == sha256]
    return ArtifactOut(
        sha256=artifact.sha256,
        size=artifact.size,
        created_at=artifact.created_at,
        content_url=content_url(artifact.sha256),
        used_by=[
            ArtifactUse(model=v.model, version=v.version, format=v.format, filename=v.filename)
            for v in users
        ],
    )


@router.get(
    "/artifacts/{sha256}/content",
    response_class=FileResponse,
    summary="Download an artifact's bytes",
    description="Streams the file with Content-Length and ETag (the quoted sha256); "
    "answers Range requests and If-None-Match.",
    responses={
        200: {
            "description": "The artifact's bytes",
            "content": {"application/octet-stream": {"schema": {"type": "string"}}},
        },
        304: {"description": "Not modified: the client has these bytes (If-None-Match)"},
        **responses(404, 422),
    },
)
def get_artifact_content(
    registry: RegistryDep,
    sha256: Sha256,
    if_none_match: Annotated[str | None, Header(max_length=4096)] = None,
) -> Response:
    path = registry.artifact_file(sha256)
    etag = f'"{sha256}"'
    if if_none_match is not None and _matches(if_none_match, etag):
        return Response(status_code=304, headers={"ETag": etag})
    return FileResponse(path, media_type="application/octet-stream", headers={"ETag": etag})


def content_url(sha256: str) -> str:
    return f"{API_PREFIX}/artifacts/{sha256}/content"


def _matches(if_none_match: str, etag: str) -> bool:
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in tags or etag in tags


def _summary(name: str, versions: list[ModelVersion]) -> ModelSummary:
    ordered = _unique(v.version for v in versions)
    return ModelSummary(
        name=name,
        versions=ordered,
        formats=sorted({v.format for v in versions}),
        latest_version=ordered[-1],
        updated_at=max(v.created_at for v in versions),
    )


def _versions(found: list[ModelVersion]) -> list[ModelVersionOut]:
    """Group ``found`` (one model's versions, oldest first) by version."""
    grouped: dict[str, list[ModelVersion]] = {}
    for item in found:
        grouped.setdefault(item.version, []).append(item)
    return [
        ModelVersionOut(model=items[0].model, version=version, formats=[_format(i) for i in items])
        for version, items in grouped.items()
    ]


def _format(version: ModelVersion) -> FormatOut:
    return FormatOut(
        format=version.format,
        sha256=version.sha256,
        size=version.size,
        filename=version.filename,
        card=version.card,
        created_at=version.created_at,
        content_url=content_url(version.sha256),
    )


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))
