"""TRELLIS image-large (Gaussian splats) in plain PyTorch, loading the published weights.

Modules, in the order the data flows:

* :mod:`.loading` — ``pipeline.json`` and the ``ckpts/<name>.json`` + ``.safetensors``
  checkpoints, built on the meta device and loaded strictly;
* :mod:`.conditioner` — DINOv2-with-registers image tokens (``transformers`` format);
* :mod:`.ss_flow`, :mod:`.ss_decoder` — dense sparse-structure flow and 64³ occupancy decoder;
* :mod:`.sparse`, :mod:`.attention`, :mod:`.layers` — sparse voxel tensors (gather-GEMM
  convolution, down/up-sampling), variable-length and shifted-window attention through
  ``scaled_dot_product_attention``, the shared transformer blocks;
* :mod:`.slat_flow`, :mod:`.gs_decoder` — structured-latent flow and Gaussian decoder;
* :mod:`.sampler` — Euler flow sampling with guidance interval and timestep rescale;
* :mod:`.fused`, :mod:`.graphs` — on CUDA: element-wise steps fused by ``torch.compile``,
  the structured-latent flow replayed as a CUDA graph;
* :mod:`.pipeline` — :class:`~.pipeline.TrellisGenerator`, the service's ``trellis`` generator.

Importing this package does not import :mod:`.pipeline` (which needs ``transformers``
only when loading weights, and the service's imaging helpers).
"""
