"""Make every link to the course's repository follow `repository.url` (and `branch`) in _config.yml.

A fork changes that one line, runs this script once, and every Colab badge, Colab install cell,
Binder link and `git clone` line of the book, the solutions, the exercises and the README points
at the fork:

    python tools/set_repository.py            # rewrite the files that differ, naming each
    python tools/set_repository.py --check    # write nothing; exit 1 listing each file that differs

It also replaces the remote badge images (Colab's and shields.io's) by the course's own SVGs in
book/_static, so that a page reads the same offline. The rewriting is textual and touches only
the links themselves: a notebook's JSON keeps its formatting byte for byte, and exercises/ stays
exactly what `python -m coursepkg.grading.generate` makes from solutions/ (the same rule rewrites
both).

--root DIR runs it on a copy of the repository (the tests do).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
# Where links to the repository live, relative to the root.
FILES = (
    "book/*.ipynb",
    "book/*.md",
    "solutions/*.ipynb",
    "exercises/*.ipynb",
    "README.md",
    "CONTRIBUTING.md",
)
# The course's own badges, in place of remote images.
BADGES = {
    "https://colab.research.google.com/assets/colab-badge.svg": "book/_static/colab-badge.svg",
    "https://img.shields.io/badge/exercises-open%20in%20Colab-orange": "book/_static/exercises-badge.svg",
}
_OWNER_NAME = r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+?"


class ConfigError(Exception):
    """_config.yml does not say which GitHub repository the course lives in."""


def repository(root: Path = ROOT) -> tuple[str, str]:
    """(owner/name, branch) from `repository.url` and `repository.branch` of _config.yml."""
    config = yaml.safe_load((root / "_config.yml").read_text(encoding="utf-8")) or {}
    settings = config.get("repository") or {}
    url = str(settings.get("url", "")).strip().rstrip("/").removesuffix(".git")
    match = re.fullmatch(rf"https://github\.com/({_OWNER_NAME})", url)
    if match is None:
        raise ConfigError(
            f"_config.yml: repository.url is {url!r}; it must be a GitHub repository's address, "
            "https://github.com/OWNER/NAME (Colab and Binder open notebooks from GitHub)"
        )
    branch = str(settings.get("branch", "main")).strip()
    if not re.fullmatch(r"[A-Za-z0-9_./-]+", branch):
        raise ConfigError(f"_config.yml: repository.branch is {branch!r}, not a branch name")
    return match.group(1), branch


def rewrite(text: str, slug: str, branch: str, where: Path, root: Path = ROOT) -> str:
    """`text` (a file's content, JSON or markdown) with every repository link set to `slug`
    and `branch`, and remote badge images replaced by the course's SVGs (relative to `where`)."""
    url = f"https://github.com/{slug}"
    # The Colab install cell: pip install "coursepkg @ git+https://github.com/OWNER/NAME[.git]".
    text = re.sub(rf"""git\+https://github\.com/{_OWNER_NAME}(?:\.git)?(?=["'@\s\\]|$)""", f"git+{url}", text)
    # Colab and Binder open a notebook of the repository at a branch.
    text = re.sub(
        rf"https://colab\.research\.google\.com/github/{_OWNER_NAME}/blob/[A-Za-z0-9_.-]+/",
        f"https://colab.research.google.com/github/{slug}/blob/{branch}/",
        text,
    )
    text = re.sub(
        rf"https://mybinder\.org/v2/gh/{_OWNER_NAME}/[A-Za-z0-9_.-]+(?=[/?\"')\s]|$)",
        f"https://mybinder.org/v2/gh/{slug}/{branch}",
        text,
    )
    text = re.sub(
        rf"git clone https://github\.com/{_OWNER_NAME}(?:\.git)?(?=[\s\"'\\]|$)", f"git clone {url}", text
    )
    # ... and the shell snippet that follows a clone enters the clone's folder, named after it.
    name = slug.split("/")[1]
    text = re.sub(rf"(git clone {re.escape(url)}\n\s*cd )[A-Za-z0-9_.-]+", rf"\g<1>{name}", text)
    for remote, local in BADGES.items():
        text = text.replace(remote, Path(os.path.relpath(root / local, where.parent)).as_posix())
    return text


def planned(root: Path = ROOT) -> dict[Path, str]:
    """Every file whose content would change: path -> new content."""
    slug, branch = repository(root)
    changes = {}
    for pattern in FILES:
        for path in sorted(root.glob(pattern)):
            text = path.read_text(encoding="utf-8")
            new = rewrite(text, slug, branch, path, root)
            if new != text:
                changes[path] = new
    return changes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file differs")
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository (default: this one)")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    try:
        changes = planned(root)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    slug, branch = repository(root)
    for path, text in changes.items():
        shown = path.relative_to(root)
        if args.check:
            print(f"{shown} does not follow _config.yml ({slug}, branch {branch})", file=sys.stderr)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {shown}")
    if args.check and changes:
        print("run `python tools/set_repository.py` to update them", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
