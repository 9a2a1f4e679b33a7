#!/usr/bin/env python3
"""A small reader of Dockerfiles, and a runner of their steps inside a chroot.

No Docker engine runs where fastext is developed, so the Dockerfiles are checked in
two ways that share this one parser:

* ``tests/test_deploy.py`` parses them and checks their instructions;
* ``scripts/arm64-check`` runs their steps (ENV, WORKDIR, USER, COPY, RUN) in order
  inside a Debian root, so every install step the image would run is exercised for real.

    python3 scripts/dockerfile.py show Dockerfile.arm64
    python3 scripts/dockerfile.py run Dockerfile.arm64 --root DIR --context . [--stage NAME]

The runner is not Docker: stages share one root file system (a later stage also sees
what an earlier one installed), and FROM only resets the environment, the working
directory and the user. What Docker does with the base image is the caller's job
(scripts/arm64-check prepares the root with what python:3.11-slim-bookworm holds).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Instruction", "Stage", "parse", "parse_file", "stages", "env_pairs", "exec_form"]


@dataclass(frozen=True)
class Instruction:
    """One logical instruction: keyword (upper case), its argument text, first line."""

    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    """A FROM and the instructions up to the next FROM."""

    image: str
    name: str | None
    platform: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse(text: str) -> list[Instruction]:
    """Logical instructions of a Dockerfile.

    A line ending in a backslash continues on the next; comment lines (first non-blank
    character ``#``) and blank lines are dropped, also in the middle of a continuation,
    as Docker does. Parser directives (``# syntax=``) are comments here.
    """
    out: list[Instruction] = []
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not parts:
            start = number
        if stripped.endswith("\\"):
            parts.append(stripped[:-1].strip())
            continue
        parts.append(stripped)
        logical = " ".join(p for p in parts if p)
        parts = []
        keyword, _, args = logical.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
    if parts:
        raise ValueError(f"line {start}: continuation runs past the end of the file")
    return out


def parse_file(path: str | os.PathLike[str]) -> list[Instruction]:
    return parse(Path(path).read_text(encoding="utf-8"))


def stages(instructions: list[Instruction]) -> list[Stage]:
    """Split into stages; instructions before the first FROM (only ARG) are dropped."""
    result: list[Stage] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            words = ins.args.split()
            platform = None
            while words and words[0].startswith("--"):
                flag = words.pop(0)
                if flag.startswith("--platform="):
                    platform = flag.split("=", 1)[1]
            if not words:
                raise ValueError(f"line {ins.line}: FROM without an image")
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            if len(words) not in (1, 3) or (len(words) == 3 and name is None):
                raise ValueError(f"line {ins.line}: cannot read FROM {ins.args!r}")
            result.append(Stage(words[0], name, platform))
        elif result:
            result[-1].instructions.append(ins)
    return result


def env_pairs(args: str) -> list[tuple[str, str]]:
    """``ENV a=1 b="two words"`` or the legacy ``ENV a one value`` → [(name, value)]."""
    words = shlex.split(args, posix=True)
    if words and "=" not in words[0]:
        return [(words[0], args.split(None, 1)[1] if len(words) > 1 else "")]
    pairs = []
    for word in words:
        name, sep, value = word.partition("=")
        if not sep:
            raise ValueError(f"ENV {args!r}: {word!r} is not name=value")
        pairs.append((name, value))
    return pairs


def exec_form(args: str) -> list[str] | None:
    """The JSON array of an exec-form RUN/CMD/ENTRYPOINT, or None for shell form."""
    text = args.strip()
    if not text.startswith("["):
        return None
    value = json.loads(text)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{args!r}: exec form must be a JSON array of strings")
    return value


def split_flags(args: str) -> tuple[dict[str, str], str]:
    """Leading ``--name=value`` flags of COPY/RUN/HEALTHCHECK, and the rest."""
    flags: dict[str, str] = {}
    rest = args.strip()
    while rest.startswith("--"):
        word, _, rest = rest.partition(" ")
        name, _, value = word[2:].partition("=")
        flags[name] = value
        rest = rest.strip()
    return flags, rest


# ---------------------------------------------------------------------------- the runner

_VAR = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def _expand(value: str, env: dict[str, str]) -> str:
    return _VAR.sub(lambda m: env.get(m.group(1) or m.group(2), ""), value)


def _dockerignore(context: Path) -> list[str]:
    path = context / ".dockerignore"
    if not path.exists():
        return []
    lines = (ln.strip() for ln in path.read_text().splitlines())
    return [ln.rstrip("/") for ln in lines if ln and not ln.startswith("#")]


def _matches(rel: str, pattern: str) -> bool:
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    if pattern.startswith("**/"):
        # "**/x" matches x at any depth: try it against every tail of every prefix.
        sub = pattern[3:]
        return any(
            fnmatch.fnmatchcase("/".join(parts[k : i + 1]), sub)
            for i in range(len(parts))
            for k in range(i + 1)
        )
    return any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes)


def _ignored(rel: str, patterns: list[str]) -> bool:
    # Enough of Docker's rules for our .dockerignore: globs, "**/", "!" exceptions
    # (the last matching pattern wins), and a pattern matching a directory excludes
    # everything under it.
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = (pattern[1:] if negate else pattern).lstrip("/")
        if _matches(rel, pat):
            result = not negate
    return result


def _copy_tree(src: Path, dst: Path, context: Path, patterns: list[str]) -> int:
    count = 0
    if src.is_file():
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
        return 1
    for dirpath, dirnames, filenames in os.walk(src):
        here = Path(dirpath)
        rel_dir = here.relative_to(context).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        dirnames[:] = [d for d in dirnames if not _ignored(rel_dir + d, patterns)]
        target = dst / here.relative_to(src)
        target.mkdir(parents=True, exist_ok=True)
        for name in filenames:
            if _ignored(rel_dir + name, patterns):
                continue
            shutil.copy2(here / name, target / name, follow_symlinks=False)
            count += 1
    return count


def _user_ids(root: Path, user: str) -> tuple[int, int, str]:
    name, _, group = user.partition(":")
    for line in (root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name or fields[2] == name:
            gid = int(fields[3])
            if group:
                for gline in (root / "etc/group").read_text().splitlines():
                    g = gline.split(":")
                    if g[0] == group or g[2] == group:
                        gid = int(g[2])
            return int(fields[2]), gid, fields[5]
    raise ValueError(f"USER {user!r}: no such user in {root}/etc/passwd")


@dataclass
class StageState:
    env: dict[str, str]
    workdir: str = "/"
    user: str = "root"


BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}


def chroot_argv(
    root: Path, state: StageState, argv: list[str], build_env: dict[str, str] | None = None
) -> tuple[list[str], dict[str, str]]:
    """The command that runs argv in the root as the stage's user, with its environment."""
    uid, gid, home = _user_ids(root, state.user)
    env = {"HOME": home, **(build_env or {}), **state.env}
    cmd = [
        "chroot",
        f"--userspec={uid}:{gid}",
        f"--groups={gid}",
        str(root),
        "/usr/bin/env",
        "-i",
        *(f"{k}={v}" for k, v in env.items()),
        "/bin/sh",
        "-c",
        'cd "$0" && exec "$@"',
        state.workdir,
        *argv,
    ]
    return cmd, env


def run(
    path: Path,
    root: Path,
    context: Path,
    stop_after: str | None,
    log,
    build_env: dict[str, str] | None = None,
) -> StageState:
    """Run the Dockerfile's steps in root; returns the last stage's state.

    ``build_env`` is set for RUN steps only and never becomes part of the image's
    environment: the host's proxy and CA settings, as Docker passes HTTP_PROXY & co.
    """
    all_stages = stages(parse_file(path))
    patterns = _dockerignore(context)
    state = StageState(dict(BASE_ENV))
    for stage in all_stages:
        state = StageState(dict(BASE_ENV))
        log(f"## FROM {stage.image} AS {stage.name} (the prepared root stands for it)")
        for ins in stage.instructions:
            t0 = time.monotonic()
            kw = ins.keyword
            if kw == "ENV":
                for name, value in env_pairs(ins.args):
                    state.env[name] = _expand(value, state.env)
            elif kw == "WORKDIR":
                state.workdir = _expand(ins.args, state.env)
                (root / state.workdir.lstrip("/")).mkdir(parents=True, exist_ok=True)
            elif kw == "USER":
                state.user = _expand(ins.args, state.env)
                _user_ids(root, state.user)  # fail now if the user does not exist
            elif kw == "COPY":
                flags, rest = split_flags(ins.args)
                words = shlex.split(rest)
                *srcs, dst = words
                dst_path = root / _expand(dst, state.env).lstrip("/")
                for src in srcs:
                    if "from" in flags:
                        source = root / src.lstrip("/")
                        target = dst_path
                        if source.resolve() != target.resolve():
                            _copy_tree(source, target, root, [])
                    else:
                        n = _copy_tree(
                            (context / src).resolve(), dst_path, context.resolve(), patterns
                        )
                        log(f"   ({n} files from the build context, .dockerignore applied)")
                if "chown" in flags:
                    subprocess.run(
                        [
                            "chroot",
                            str(root),
                            "chown",
                            "-R",
                            flags["chown"],
                            "/" + dst_path.relative_to(root).as_posix(),
                        ],
                        check=True,
                    )
            elif kw == "RUN":
                flags, rest = split_flags(ins.args)
                argv = exec_form(rest) or ["/bin/sh", "-c", rest]
                cmd, _ = chroot_argv(root, state, argv, build_env)
                log(f"$ RUN (as {state.user}, in {state.workdir}) {rest}")
                sys.stdout.flush()
                proc = subprocess.run(cmd)
                if proc.returncode != 0:
                    raise SystemExit(
                        f"RUN at {path.name}:{ins.line} failed (exit {proc.returncode}): {rest}"
                    )
            elif kw in ("ADD",):
                raise SystemExit(f"{path.name}:{ins.line}: ADD is not supported; use COPY")
            else:
                # EXPOSE, HEALTHCHECK, ENTRYPOINT, CMD, LABEL: image metadata, nothing to run.
                continue
            if kw in ("RUN", "COPY"):
                log(f"   {kw} at line {ins.line} took {time.monotonic() - t0:.1f} s")
        if stop_after and stage.name == stop_after:
            break
    return state


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    show = sub.add_parser("show", help="print the stages and instructions")
    show.add_argument("dockerfile", type=Path)
    runp = sub.add_parser("run", help="run the steps inside a chroot (as root)")
    runp.add_argument("dockerfile", type=Path)
    runp.add_argument("--root", type=Path, required=True)
    runp.add_argument("--context", type=Path, default=Path("."))
    runp.add_argument("--stage", help="stop after this stage")
    runp.add_argument(
        "--build-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set for RUN steps only (host proxy/CA settings), not in the image",
    )
    runp.add_argument(
        "--env-out", type=Path, help="write the final stage's ENV and USER as JSON here"
    )
    args = parser.parse_args(argv)
    if args.cmd == "show":
        for st in stages(parse_file(args.dockerfile)):
            print(f"FROM {st.image} AS {st.name} platform={st.platform}")
            for ins in st.instructions:
                print(f"  {ins.line:4d} {ins.keyword} {ins.args}")
        return 0
    build_env = dict(item.split("=", 1) for item in args.build_env)
    state = run(
        args.dockerfile,
        args.root,
        args.context,
        args.stage,
        lambda msg: print(msg, flush=True),
        build_env,
    )
    if args.env_out:
        args.env_out.write_text(
            json.dumps({"env": state.env, "user": state.user, "workdir": state.workdir})
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
