"""Just enough of Docker's build-file rules to replay a Dockerfile without Docker.

- `parse`: instructions per stage (line continuations, comments, `--flag=value`
  options, exec-form JSON arguments);
- `env_assignments`: the `ENV a=b c=d` form, with `$VAR` / `${VAR}` expanded
  against the environment built so far, as Docker does;
- `context_files`: which files of the build context `.dockerignore` lets
  through (Go `filepath.Match` patterns plus `**`, `!` exceptions, a pattern
  that matches a folder also matching everything under it, the last matching
  pattern deciding).
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

_FLAG = re.compile(r"--([a-z-]+)(?:=(\S+))?\s+")
_VAR = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


@dataclass
class Instruction:
    keyword: str  # upper case: RUN, COPY, ENV, ...
    args: str  # what follows the keyword and its --flags
    flags: dict[str, str] = field(default_factory=dict)
    mounts: list[str] = field(default_factory=list)  # RUN --mount=... (may repeat)

    def exec_form(self) -> list[str]:
        """The JSON array of an exec-form ENTRYPOINT / CMD / HEALTHCHECK CMD."""
        text = self.args
        if self.keyword == "HEALTHCHECK":
            keyword, _, text = text.partition(" ")
            if keyword.upper() != "CMD":
                raise ValueError(f"HEALTHCHECK {keyword}: expected CMD")
        text = text.strip()
        if not text.startswith("["):
            raise ValueError(f"{self.keyword} is in shell form: {text!r}")
        value = json.loads(text)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{self.keyword}: not a JSON array of strings")
        return value


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def one(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        if len(found) != 1:
            raise ValueError(f"stage {self.name or self.base}: {len(found)} {keyword} instructions")
        return found[0]


def _logical_lines(text: str) -> list[str]:
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue  # comments (also inside continuations) and blank lines
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append((current + stripped).strip())
        current = ""
    if current.strip():
        lines.append(current.strip())
    return lines


def parse(text: str) -> list[Stage]:
    stages: list[Stage] = []
    for line in _logical_lines(text):
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        if keyword == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base=parts[0], name=name, instructions=[]))
            continue
        if not stages:
            raise ValueError(f"{keyword} before the first FROM")
        inst = Instruction(keyword=keyword, args=rest)
        while m := _FLAG.match(inst.args):
            name, value = m.group(1), m.group(2) or ""
            if name == "mount":
                inst.mounts.append(value)
            else:
                inst.flags[name] = value
            inst.args = inst.args[m.end() :]
        stages[-1].instructions.append(inst)
    return stages


def expand(value: str, env: Mapping[str, str]) -> str:
    return _VAR.sub(lambda m: env.get(m.group(1) or m.group(2), ""), value)


def env_assignments(inst: Instruction, env: Mapping[str, str]) -> dict[str, str]:
    """`ENV a=1 b=$a` -> {"a": "1", "b": "1"} (each value sees the ones before it)."""
    seen = dict(env)
    out: dict[str, str] = {}
    for token in shlex.split(inst.args):
        key, sep, value = token.partition("=")
        if not sep:
            raise ValueError(f"ENV {inst.args!r}: use the key=value form")
        out[key] = seen[key] = expand(value, seen)
    return out


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif c == "*":
            out += "[^/]*"
            i += 1
        elif c == "?":
            out += "[^/]"
            i += 1
        elif c == "[":
            end = pattern.index("]", i + 1)
            body = pattern[i + 1 : end]
            out += "[" + ("^" + body[1:] if body.startswith(("!", "^")) else body) + "]"
            i = end + 1
        else:
            out += re.escape(c)
            i += 1
    return re.compile(out)


def context_files(root: Path) -> list[str]:
    """Paths (relative, with /) of the files in the build context at `root` after .dockerignore."""
    rules: list[tuple[bool, re.Pattern[str]]] = []
    negated: list[str] = []
    ignore = root / ".dockerignore"
    if ignore.exists():
        for line in ignore.read_text().splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
            rules.append((negate, _pattern_regex(pattern)))
            if negate:
                negated.append(pattern)

    def excluded(rel: str) -> bool:
        parts = rel.split("/")
        candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        verdict = False
        for negate, regex in rules:
            if any(regex.fullmatch(c) for c in candidates):
                verdict = not negate
        return verdict

    # a folder that is excluded is not walked unless an exception (`!...`) could reach inside it
    exception_prefixes = [re.split(r"[*?\[]", p, maxsplit=1)[0] for p in negated]

    def walk_into(rel: str) -> bool:
        return not excluded(rel) or any(
            rel.startswith(prefix) or prefix.startswith(rel + "/") for prefix in exception_prefixes
        )

    files: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath).relative_to(root)
        dirnames[:] = sorted(d for d in dirnames if walk_into((here / d).as_posix()))
        for name in sorted(filenames):
            rel = Path(dirpath, name).relative_to(root).as_posix()
            if not excluded(rel):
                files.append(rel)
    return files
