"""The README and docs/ stay true to the code: every TOML example is a valid configuration (the
full one, with a custom policy, lives in docs/configuration.md), the README stays short, keeps
the quick start verbatim and carries no commit hash, every relative link leads somewhere, and
docs/cli-reference.md is what the argparse definitions give."""

import re
import tomllib
from pathlib import Path

import pytest

from ppazam_core.cli_reference import COMMAND, reference
from ppazam_core.config import ExperimentConfig

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
CONFIGURATION = DOCS / "configuration.md"
PAGES = [README, *sorted(DOCS.glob("*.md"))]

README_MAX_LINES = 220
QUICK_START = ("python3 -m pip install tox && python3 -m tox -e bench",
               "python3 -m pip install tox && python3 -m tox -e tests")
# a commit hash: 7 to 40 lowercase hex digits, at least one of them a decimal digit (so that
# words such as "defaced" pass; hashes such as "5285290" do not)
COMMIT_HASH = re.compile(r"\b(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b")
FENCE = re.compile(r"^```.*?^```", flags=re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def fenced(text: str, language: str) -> list[str]:
    """The bodies of the ```language blocks of a Markdown text."""
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)


def relative_links(page: Path) -> list[str]:
    """The targets of the page's Markdown links that are neither URLs nor mail addresses
    (code blocks and inline code left out)."""
    text = re.sub(r"`[^`\n]*`", "", FENCE.sub("", page.read_text()))
    return [target for target in LINK.findall(text) if not re.match(r"^[a-z][a-z0-9+.-]*:", target)]


def slugs(page: Path) -> set[str]:
    """GitHub's anchors of the page's headings (lowercased, punctuation dropped, spaces to
    hyphens, a repeated heading numbered)."""
    seen: dict[str, int] = {}
    anchors = set()
    for heading in re.findall(r"^#{1,6}\s+(.*?)\s*$", FENCE.sub("", page.read_text()), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_toml_examples_are_valid_configurations(page):
    for block in fenced(page.read_text(), "toml"):
        ExperimentConfig.from_dict(tomllib.loads(block))


def test_the_full_configuration_example_is_in_docs_configuration():
    found = {page: [block for block in fenced(page.read_text(), "toml") if "[policies." in block] for page in PAGES}
    assert len(found[CONFIGURATION]) == 1, "docs/configuration.md lost its full TOML example"
    assert sum(map(len, found.values())) == 1, f"more than one full example: {[p.name for p, b in found.items() if b]}"
    config = ExperimentConfig.from_dict(tomllib.loads(found[CONFIGURATION][0]))
    assert config.data.eval_spec("phone").policy.some_of == 2
    assert config.model.blocks[0].stride == 4 and config.clusters.n_clusters == 5


def test_the_readme_is_short_and_keeps_the_quick_start():
    text = README.read_text()
    assert len(text.splitlines()) <= README_MAX_LINES, f"README.md is {len(text.splitlines())} lines long"
    assert any(all(line in block.splitlines() for line in QUICK_START) for block in fenced(text, "bash")), \
        "README.md lost the two quick-start lines (verbatim, in one ```bash block)"


def test_the_readme_carries_no_commit_hash():
    found = COMMIT_HASH.findall(README.read_text())
    assert not found, f"README.md quotes commit hashes {found}: history and measured figures go in CHANGELOG.md"


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_relative_links_lead_to_existing_files_and_headings(page):
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and file.suffix == ".md" and anchor not in slugs(file):
            broken.append(f"{target} (no such heading in {file.name})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {broken}"


def test_the_cli_reference_is_current():
    page = DOCS / "cli-reference.md"
    assert page.is_file() and page.read_text() == reference(), \
        f"docs/cli-reference.md is not what the argparse definitions give: run `{COMMAND}`"
