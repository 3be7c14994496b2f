"""Tencent Hunyuan3D-2 meshes through the ``hy3dgen`` package.

:class:`Hunyuan3DGenerator` (and its ``Params``) import without torch; the
models load in :meth:`Hunyuan3DGenerator.load`. Modules: ``layout`` (where
weights live), ``weights`` (building the models), ``conditioner`` (DINOv2),
``field`` (the geo-decoder as an occupancy field), ``pipeline`` (the chain).
"""

from ai_engine.generators.hunyuan3d.generator import Hunyuan3DGenerator, Hunyuan3DParams

__all__ = ["Hunyuan3DGenerator", "Hunyuan3DParams"]
