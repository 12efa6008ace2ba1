"""Publishing the course: the repository is named once (_config.yml) and every link follows it;
the GitHub Pages workflow only runs commands that exist.

tools/set_repository.py is run on a copy of the repository's notebooks and pages, after the one
line of _config.yml is changed, as a fork would do.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "set_repository.py"
WORKFLOW = ROOT / ".github" / "workflows" / "publish.yml"
FORK = ("a-teacher/flows-fork", "spring-2027")


def _tool():
    spec = importlib.util.spec_from_file_location("set_repository", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def _configured() -> tuple[str, str]:
    config = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]
    return config["url"].rstrip("/").removeprefix("https://github.com/"), config.get("branch", "main")


@pytest.fixture
def fork(tmp_path: Path) -> Path:
    """A copy of what the tool rewrites, with _config.yml naming another repository and branch."""
    for folder in ("book", "solutions", "exercises"):
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    for name in ("README.md", "CONTRIBUTING.md", "_config.yml"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, tmp_path / name)
    config = (tmp_path / "_config.yml").read_text()
    slug, branch = _configured()
    # The one line a fork changes (and its branch, to see that the branch follows too).
    config, count = re.subn(
        r"(?m)^(\s*url:\s*)https://github\.com/\S+$", rf"\g<1>https://github.com/{FORK[0]}", config
    )
    assert count == 1, "_config.yml must have exactly one repository url line"
    config, count = re.subn(r"(?m)^(\s*branch:\s*)\S+$", rf"\g<1>{FORK[1]}", config)
    assert count == 1
    (tmp_path / "_config.yml").write_text(config)
    return tmp_path


def _notebooks(root: Path) -> list[Path]:
    return sorted(p for folder in ("book", "solutions", "exercises") for p in (root / folder).glob("*.ipynb"))


def _links(text: str) -> list[str]:
    return re.findall(r"https?://[^\s\"'()<>\\\]]+", text)


def test_a_fork_changes_one_line_and_every_link_follows(fork):
    slug, branch = FORK
    old_slug, _ = _configured()
    assert _run(str(TOOL), "--check", "--root", str(fork)).returncode == 1, "--check must see the change"
    result = _run(str(TOOL), "--root", str(fork))
    assert result.returncode == 0, result.stderr

    chapters = sorted((fork / "book").glob("*.ipynb"))
    assert chapters, "no chapter notebooks were copied"
    for path in _notebooks(fork):
        notebook = json.loads(path.read_text())
        first = "".join(notebook["cells"][0]["source"])
        assert f"coursepkg @ git+https://github.com/{slug}" in first, f"{path.name}: install cell"
        text = path.read_text()
        assert old_slug not in text, f"{path.relative_to(fork)} still names {old_slug}"
        for link in _links(text):
            if "colab.research.google.com/github/" in link:
                assert link.startswith(f"https://colab.research.google.com/github/{slug}/blob/{branch}/"), (
                    link
                )
                # The notebook a badge opens exists in the repository.
                target = link.split(f"/blob/{branch}/", 1)[1]
                assert (fork / target).is_file(), f"{path.name}: badge opens {target}, which is not there"
            assert "colab-badge.svg" not in link and "img.shields.io" not in link, f"remote badge {link}"
    for path in chapters:
        markdown = "".join(
            "".join(c["source"])
            for c in json.loads(path.read_text())["cells"]
            if c["cell_type"] == "markdown"
        )
        colab = f"https://colab.research.google.com/github/{slug}/blob/{branch}"
        assert f"{colab}/book/{path.name}" in markdown, f"{path.name}: badge to open this chapter"
        # The badges are the course's own images, found next to the chapter.
        for image in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", markdown):
            if image.endswith(".svg"):
                assert not image.startswith("http"), f"{path.name}: remote badge {image}"
                assert (path.parent / image).is_file(), f"{path.name}: badge image {image} is missing"
    for path in [fork / "README.md", *sorted((fork / "book").glob("*.md"))]:
        if path.exists():
            text = path.read_text()
            assert f"github.com/{old_slug}" not in text and f"github/{old_slug}" not in text, path.name
    intro = (fork / "book" / "intro.md").read_text()
    if "git clone" in intro:
        assert f"git clone https://github.com/{slug}\ncd {slug.split('/')[1]}" in intro

    # Run twice, nothing changes; and the copy is now in sync.
    again = _run(str(TOOL), "--root", str(fork))
    assert again.returncode == 0 and again.stdout == "", again.stdout
    assert _run(str(TOOL), "--check", "--root", str(fork)).returncode == 0


def test_rewritten_exercises_are_still_what_generate_makes(fork, tmp_path_factory):
    """exercises/ is generated from solutions/: the tool rewrites both the same way, so the
    generator's check still passes on the fork."""
    assert _run(str(TOOL), "--root", str(fork)).returncode == 0
    references = tmp_path_factory.mktemp("references")
    shutil.copytree(ROOT / "coursepkg" / "grading" / "references", references, dirs_exist_ok=True)
    args = ["--solutions", str(fork / "solutions"), "--exercises", str(fork / "exercises")]
    result = _run("-m", "coursepkg.grading.generate", "--check", *args, "--references", str(references))
    assert result.returncode == 0, result.stderr


def test_rewrite_touches_only_links():
    tool = _tool()
    where = ROOT / "book" / "01_x.ipynb"
    text = (
        '"coursepkg @ git+https://github.com/old/repo",\n'
        '"\\"coursepkg @ git+https://github.com/old/repo.git\\",\\n"\n'
        "[![Open](https://colab.research.google.com/assets/colab-badge.svg)]"
        "(https://colab.research.google.com/github/old/repo/blob/dev/book/01_x.ipynb)\n"
        "https://mybinder.org/v2/gh/old/repo/dev?urlpath=tree\n"
        "git clone https://github.com/old/repo.git\ncd repo\n"
        "https://github.com/pytorch/pytorch stays; so does colab.research.google.com/notebooks/intro.ipynb\n"
    )
    new = tool.rewrite(text, "me/course", "main", where)
    assert new == (
        '"coursepkg @ git+https://github.com/me/course",\n'
        '"\\"coursepkg @ git+https://github.com/me/course\\",\\n"\n'
        "[![Open](_static/colab-badge.svg)]"
        "(https://colab.research.google.com/github/me/course/blob/main/book/01_x.ipynb)\n"
        "https://mybinder.org/v2/gh/me/course/main?urlpath=tree\n"
        "git clone https://github.com/me/course\ncd course\n"
        "https://github.com/pytorch/pytorch stays; so does colab.research.google.com/notebooks/intro.ipynb\n"
    )


@pytest.mark.parametrize("url", ["https://gitlab.com/me/course", "github.com/me/course", ""])
def test_a_repository_url_that_colab_cannot_open_is_refused(tmp_path, url):
    (tmp_path / "_config.yml").write_text(yaml.safe_dump({"repository": {"url": url, "branch": "main"}}))
    result = _run(str(TOOL), "--check", "--root", str(tmp_path))
    assert result.returncode == 2
    assert "repository.url" in result.stderr and "https://github.com/OWNER/NAME" in result.stderr


def test_the_repository_follows_its_config():
    result = _run(str(TOOL), "--check")
    assert result.returncode == 0, (
        "links do not follow _config.yml's repository: run `python tools/set_repository.py`\n" + result.stderr
    )


# --- the GitHub Pages workflow ---------------------------------------------------------------


def _make_targets() -> set[str]:
    targets = set()
    for line in (ROOT / "Makefile").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.%/-]+(?:\s+[A-Za-z0-9_.%/-]+)*)\s*:(?!=)", line)
        if match and not line.startswith("\t"):
            targets.update(match.group(1).split())
    return targets


def test_publish_workflow_builds_with_make_and_deploys_to_pages():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    triggers = workflow.get(True, workflow.get("on"))  # YAML 1.1 reads a bare `on` as True
    assert triggers["push"]["branches"] == ["main"]
    steps = [step for job in workflow["jobs"].values() for step in job.get("steps", [])]
    commands = "\n".join(step.get("run", "") for step in steps)
    uses = [step.get("uses", "").split("@")[0] for step in steps]
    for action in (
        "actions/checkout",
        "actions/upload-pages-artifact",
        "actions/deploy-pages",
        "actions/cache",
    ):
        assert action in uses, f"the workflow does not use {action}"
    assert workflow["permissions"]["pages"] == "write" and workflow["permissions"]["id-token"] == "write"
    cache = next(step for step in steps if step.get("uses", "").startswith("actions/cache"))
    assert "_build/.jupyter_cache" in cache["with"]["path"], "the execution cache is not kept between runs"
    assert "coursepkg/**" in cache["with"]["key"], "the cache key must change with the package"
    upload = next(step for step in steps if step.get("uses", "").startswith("actions/upload-pages-artifact"))
    assert upload["with"]["path"] == "_build/html"

    made = re.findall(r"\bmake\s+([A-Za-z0-9_.-]+)", commands)
    assert "book" in made, "the workflow must build with `make book`, as CI does"
    missing = sorted(set(made) - _make_targets())
    assert not missing, f"the workflow runs make targets the Makefile lacks: {missing}"
    scripts = re.findall(r"\b(tools/[\w./-]+\.py)", commands)
    assert all((ROOT / script).is_file() for script in scripts), scripts


def test_makefile_targets_are_found():
    """The parser above must be able to fail: it sees the real targets and nothing else."""
    targets = _make_targets()
    assert {"book", "test", "serve", "pdf"} <= targets
    assert "BIN" not in targets and "PYTHON" not in targets
