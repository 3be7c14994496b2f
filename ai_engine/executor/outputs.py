"""Turn a generator's output into the requested files and a thumbnail (CPU, blocking)."""

from __future__ import annotations

from dataclasses import dataclass

from ai_engine.errors import ExportError
from ai_engine.generators.base import GeneratorOutput
from ai_engine.geometry.types import Gaussians

# file name and media type per output format
FILES: dict[str, tuple[str, str]] = {
    "glb": ("model.glb", "model/gltf-binary"),
    "stl": ("model.stl", "model/stl"),
    "obj": ("model.obj", "model/obj"),
    "ply": ("model.ply", "application/ply"),
    "splat_ply": ("splat.ply", "application/ply"),
    "spz": ("splat.spz", "application/octet-stream"),
}
THUMBNAIL = ("thumbnail.png", "image/png")
SPLATS_FROM_MESH = 200_000  # Gaussians sampled on a mesh surface for splat outputs


@dataclass
class OutputFile:
    format: str
    name: str
    content_type: str
    data: bytes


def export_outputs(output: GeneratorOutput, formats: list[str], *,
                   thumbnail: bool = True) -> tuple[list[OutputFile], OutputFile | None]:
    """Finish ``output`` (its post-processing) and encode it in each of ``formats``;
    returns (files, thumbnail PNG or None)."""
    from ai_engine.geometry.export import export_mesh
    from ai_engine.geometry.splats import gaussians_from_mesh, write_ply, write_spz
    from ai_engine.geometry.thumbnail import render_thumbnail

    output = output.finished()
    files: list[OutputFile] = []
    gaussians: Gaussians | None = output.gaussians
    for fmt in formats:
        name, content_type = FILES[fmt]
        if fmt in ("splat_ply", "spz"):
            if gaussians is None:
                if output.mesh is None:
                    raise ExportError("the generator produced nothing to export")
                gaussians = gaussians_from_mesh(output.mesh, count=SPLATS_FROM_MESH)
            data = write_ply(gaussians) if fmt == "splat_ply" else write_spz(gaussians)
        else:
            if output.mesh is None:
                raise ExportError(f"format {fmt!r} needs a mesh; this generator makes splats",
                                  code="export.unsupported_format")
            data = export_mesh(output.mesh, fmt)
        files.append(OutputFile(fmt, name, content_type, data))
    thumb = None
    if thumbnail:
        png = render_thumbnail(output.mesh, gaussians=None if output.mesh else gaussians)
        thumb = OutputFile("png", THUMBNAIL[0], THUMBNAIL[1], png)
    return files, thumb
