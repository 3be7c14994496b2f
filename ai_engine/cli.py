"""Command line: ``ai-engine serve | worker | generate | models``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ai_engine.config import Settings

if TYPE_CHECKING:
    from ai_engine.fetch import SafeFetcher

log = logging.getLogger("ai_engine")
EXTENSIONS = {".glb": "glb", ".stl": "stl", ".obj": "obj", ".ply": "ply", ".spz": "spz"}


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def cmd_serve(settings: Settings) -> int:
    from aiohttp import web

    from ai_engine.app import create_app

    try:
        settings.check_startup()
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    app = create_app(settings, run_executors=settings.executors)
    log.info("listening on http://%s:%d (data in %s)", settings.host, settings.port,
             settings.data_dir.resolve())
    # shutdown_timeout bounds the wait for open HTTP requests (SSE streams included);
    # the executors' drain (DRAIN_TIMEOUT_S) comes after it, in the app's cleanup.
    web.run_app(app, host=settings.host, port=settings.port, print=None,
                shutdown_timeout=5.0, access_log=None)
    return 0


def cmd_worker(settings: Settings) -> int:
    if not settings.queue_url:
        log.error("`ai-engine worker` takes jobs from a shared queue: set AI_ENGINE_QUEUE_URL "
                  "(redis://...); with the embedded queue, `ai-engine serve` runs executors")
        return 2
    from ai_engine.worker import run_worker

    return run_worker(settings)


def cmd_models(settings: Settings) -> int:
    from ai_engine.generators.registry import has_gpu

    try:
        from ai_engine.models_inventory import format_inventory
    except ImportError:
        print(f"models dir: {settings.models_dir.resolve()}")
        print("silhouette: available (needs no weights)")
        return 0
    print(format_inventory(settings.models_dir, has_gpu=has_gpu()))
    return 0


def _output_format(out: Path, fmt: str | None) -> str:
    if fmt:
        return fmt
    if out.suffix.lower() in EXTENSIONS:
        return EXTENSIONS[out.suffix.lower()]
    raise SystemExit(f"cannot tell the format from {out.name!r}: pass --format")


def cmd_generate(settings: Settings, args: argparse.Namespace) -> int:
    """One job in this process, no server: read, prepare, generate, export, write."""
    from tqdm import tqdm

    from ai_engine import imaging
    from ai_engine.errors import EngineError
    from ai_engine.executor.outputs import export_outputs
    from ai_engine.fetch import SafeFetcher
    from ai_engine.generators.registry import FORMATS, has_gpu, load_generator, resolve_auto

    out = Path(args.output)
    fmt = _output_format(out, args.format)
    name = args.generator or settings.generator
    name = resolve_auto(settings.models_dir) if name == "auto" else name
    if fmt not in FORMATS[name]:
        print(f"error: {name} cannot produce {fmt}", file=sys.stderr)
        return 2
    seed = args.seed if args.seed >= 0 else secrets.randbelow(2**31)
    bar = tqdm(total=100, unit="%", bar_format="{l_bar}{bar}| {n:.0f}% {postfix}")

    def step(label: str, to: float) -> None:
        bar.set_postfix_str(label)
        bar.update(max(0.0, to - bar.n))

    try:
        step("reading", 1)
        source = args.image
        if source.startswith(("http://", "https://")):
            fetcher = SafeFetcher(allow_private=settings.allow_private_urls,
                                  timeout_s=settings.fetch_timeout,
                                  max_bytes=settings.fetch_max_bytes)
            data = asyncio.run(_fetch_and_close(fetcher, source))
        else:
            data = Path(source).read_bytes()
        step("loading model", 5)
        device = args.device or ("cuda" if name != "silhouette" and has_gpu() else "cpu")
        generator = load_generator(name, models_dir=settings.models_dir, device=device,
                                   settings=settings)
        step("preparing image", 10)
        from ai_engine.imaging.segment import load_segmenter

        cutout = imaging.prepare(data, max_pixels=settings.max_image_pixels,
                                 segmenter=load_segmenter(settings))
        framed = generator.frame(cutout.rgba)
        step("generating", 15)
        output = generator(framed, params=type(generator).Params(), seed=seed,
                           on_progress=lambda f: step("generating", 15 + 70 * f))
        step("exporting", 85)
        files, _ = export_outputs(output, [fmt], thumbnail=False)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(files[0].data)
        step("done", 100)
    except EngineError as exc:
        bar.close()
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    bar.close()
    print(f"wrote {out} ({len(files[0].data)} bytes, {name}, seed {seed})")
    return 0


async def _fetch_and_close(fetcher: SafeFetcher, url: str) -> bytes:
    try:
        return await fetcher.fetch_image(url)
    finally:
        await fetcher.aclose()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ai-engine", description=__doc__)
    parser.add_argument("--log-level", help="default INFO (WARNING for generate)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="the service: HTTP API and executors")
    sub.add_parser("worker", help="executors only, taking jobs from AI_ENGINE_QUEUE_URL")
    sub.add_parser("models", help="which weights are present and which generators can run")
    gen = sub.add_parser("generate", help="one job, no server")
    gen.add_argument("image", help="image path or http(s) URL")
    gen.add_argument("-o", "--output", required=True, help="output file")
    gen.add_argument("--generator", choices=["auto", "silhouette", "hunyuan3d", "trellis"])
    gen.add_argument("--format", choices=["glb", "stl", "obj", "ply", "splat_ply", "spz"])
    gen.add_argument("--seed", type=int, default=-1)
    gen.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if present)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level or ("WARNING" if args.command == "generate" else "INFO"))
    settings = Settings()
    if args.command == "serve":
        return cmd_serve(settings)
    if args.command == "worker":
        return cmd_worker(settings)
    if args.command == "models":
        return cmd_models(settings)
    return cmd_generate(settings, args)


if __name__ == "__main__":
    raise SystemExit(main())
