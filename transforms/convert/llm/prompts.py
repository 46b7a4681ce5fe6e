"""Versioned prompt sets, shipped as TOML files in `transforms/convert/llm/prompts/`."""
from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

STEPS = ("question", "answer", "judge")
DEFAULT_PROMPT_VERSION = "unify-1"


class PromptError(ValueError):
    """A prompt set that is missing or lacks a step."""


@dataclass(frozen=True)
class PromptSet:
    version: str
    templates: dict  # step -> {"system": str, "user": str}

    def messages(self, step: str, **fields) -> list[dict]:
        template = self.templates[step]
        return [
            {"role": "system", "content": template["system"]},
            {"role": "user", "content": template["user"].format(**fields)},
        ]


def available_versions() -> list[str]:
    folder = resources.files("transforms.convert.llm") / "prompts"
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml"))


def load_prompts(version: str = DEFAULT_PROMPT_VERSION, path: str | Path | None = None) -> PromptSet:
    """The shipped prompt set `version`, or a user's own file at `path` (its `version` key wins)."""
    if path is not None:
        text = Path(path).read_text(encoding="utf-8")
        origin = str(path)
    else:
        resource = resources.files("transforms.convert.llm") / "prompts" / f"{version}.toml"
        if not resource.is_file():
            raise PromptError(f"no prompt set {version!r} (shipped: {', '.join(available_versions())})")
        text = resource.read_text(encoding="utf-8")
        origin = version
    data = tomllib.loads(text)
    missing = [s for s in STEPS if not isinstance(data.get(s), dict) or not {"system", "user"} <= set(data[s])]
    if missing or not data.get("version"):
        raise PromptError(f"prompt set {origin}: needs a version and system/user for {', '.join(missing or ['version'])}")
    return PromptSet(str(data["version"]), {s: data[s] for s in STEPS})
