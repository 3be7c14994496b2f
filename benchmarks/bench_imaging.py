"""CPU timings of image preparation: decode, cut-out, framing, prepare.

Run: ``python benchmarks/bench_imaging.py``. Prints one line per measurement
(best of several runs). Inputs are skimage's bundled coffee.png scaled to each size.
The learned cut-out methods and the edit stage (full-size random models, CPU or
GPU) are timed by ``benchmarks/bench_imaging_models.py``.
"""

from __future__ import annotations

import io
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import skimage
from PIL import Image

from ai_engine.imaging import cut_out, decode_image, frame_hunyuan, frame_trellis, prepare

MAX_PIXELS = 64_000_000


def _best_ms(fn: Callable[[], object], *, runs: int = 7) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    # The best run: this measures the code, not the other work on a shared machine.
    return 1000 * min(times)


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, quality=90) if fmt == "JPEG" else image.save(buffer, fmt)
    return buffer.getvalue()


def _bench_size(image: Image.Image) -> None:
    rgba = np.asarray(image.convert("RGBA"))
    png, jpeg = _encoded(image, "PNG"), _encoded(image, "JPEG")
    cut, _ = cut_out(rgba)
    figures = {
        "decode PNG": _best_ms(lambda: decode_image(png, max_pixels=MAX_PIXELS)),
        "decode JPEG": _best_ms(lambda: decode_image(jpeg, max_pixels=MAX_PIXELS)),
        "cut_out": _best_ms(lambda: cut_out(rgba)),
        "frame_hunyuan": _best_ms(lambda: frame_hunyuan(cut)),
        "frame_trellis": _best_ms(lambda: frame_trellis(cut)),
    }
    print(f"{image.width}²  " + " | ".join(f"{k} {v:6.1f} ms" for k, v in figures.items()))


def main() -> None:
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}")
    coffee = Image.open(Path(skimage.__file__).parent / "data" / "coffee.png").convert("RGB")
    for side in (512, 1024, 2048):
        _bench_size(coffee.resize((side, side), Image.Resampling.LANCZOS))
    big = coffee.resize((4000, 3000), Image.Resampling.LANCZOS)
    jpeg = _encoded(big, "JPEG")
    prepare_ms = _best_ms(lambda: prepare(jpeg, max_pixels=MAX_PIXELS), runs=3)
    decode_ms = _best_ms(lambda: decode_image(jpeg, max_pixels=MAX_PIXELS), runs=3)
    print(f"12 MP JPEG  prepare (max_side 2048) {prepare_ms:7.1f} ms"
          f" | full-size decode {decode_ms:7.1f} ms")


if __name__ == "__main__":
    main()
