"""Reading docker/Dockerfile without Docker: its global ARGs, stages and instructions."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def last(self, keyword: str) -> str | None:
        found = [args for kw, args in self.instructions if kw == keyword]
        return found[-1] if found else None

    def text(self) -> str:
        return "\n".join(f"{kw} {args}" for kw, args in self.instructions)

    def env(self) -> dict[str, str]:
        """The stage's ENV settings (``KEY=value`` forms without spaces in values)."""
        pairs = " ".join(args for kw, args in self.instructions if kw == "ENV").split()
        return dict(pair.split("=", 1) for pair in pairs if "=" in pair)


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, each with its (KEYWORD, arguments) in order."""
    joined = re.sub(r"\\\n", " ", text)  # line continuations
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for raw in joined.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            parts = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), parts[0])
            stages.append(Stage(base, parts[2] if len(parts) > 2 else str(len(stages))))
        elif stages:
            stages[-1].instructions.append((keyword, rest))
        elif keyword == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default.strip('"')
    return args, stages


def stages_by_name() -> dict[str, Stage]:
    return {s.name: s for s in parse_dockerfile(DOCKERFILE.read_text())[1]}
