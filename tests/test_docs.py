"""The README and docs/ hold together: links resolve, the README stays small, tables match config.

Every relative link or image in README.md and docs/*.md must name an existing file, and a
``#anchor`` into a markdown file must name one of its headings (GitHub's slugs). The README is the
front door (at most 20 KB); its configuration table has one row per ``config.Settings`` field with
that field's default, and every ``FACEMATCH_`` row of any table with a default column in docs/
agrees with config.py too. The layout table names every Python module.
"""

from __future__ import annotations

import dataclasses
import re
import socket
from pathlib import Path

import pytest

from facematch import config
from facematch.config import Settings
from facematch.decision import scores as score_service

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
README_MAX_BYTES = 20 * 1024

# [text](target) and ![alt](target); the target stops at whitespace or ')' (an optional
# "title" may follow). Reference-style definitions: [name]: target
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")
HTML_LINK = re.compile(r"<(?:img|a)\s[^>]*?(?:src|href)=\"([^\"]+)\"", re.IGNORECASE)
CODE_SPAN = re.compile(r"(`+).*?\1")


def prose_lines(text: str) -> list[str]:
    """Return the lines of ``text`` outside fenced code blocks (a fence's own lines excluded)."""
    lines, fence = [], None
    for line in text.splitlines():
        stripped = line.lstrip()
        marker = stripped[:3]
        if marker in ("```", "~~~"):
            if fence is None:
                fence = marker
            elif marker == fence:
                fence = None
            continue
        if fence is None:
            lines.append(line)
    return lines


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading's text: lower case, punctuation but '-' and '_' dropped,
    spaces to '-'. Markdown emphasis and code marks are punctuation and go too."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())  # a link's text only
    text = text.lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a markdown file, with GitHub's -1, -2 suffixes for repeats."""
    seen: dict[str, int] = {}
    found = set()
    for line in prose_lines(path.read_text(encoding="utf-8")):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = github_slug(match.group(1))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def links(path: Path) -> list[str]:
    """Every link and image target in a markdown file's prose (code spans and blocks skipped)."""
    targets = []
    for line in prose_lines(path.read_text(encoding="utf-8")):
        line = CODE_SPAN.sub("", line)
        targets += INLINE_LINK.findall(line)
        targets += HTML_LINK.findall(line)
        reference = REFERENCE_LINK.match(line)
        if reference:
            targets.append(reference.group(1))
    return targets


def broken_links(path: Path) -> list[str]:
    """The relative links of ``path`` that name no file, or no heading of a markdown file."""
    broken = []
    for target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith("//"):
            continue  # http:, https:, mailto: ...: not checked here
        file_part, _, anchor = target.partition("#")
        file_part = file_part.split("?")[0]
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading #{anchor} in {resolved.name}")
    return broken


def table_rows(lines: list[str]) -> list[dict[str, str]]:
    """The body rows of every markdown table in ``lines`` as {lower-cased header: cell}."""
    rows, header = [], None
    for line in lines:
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = [c.lower() for c in cells]
        elif not all(set(c) <= set("-: ") for c in cells):
            rows.append(dict(zip(header, cells, strict=False)))
    return rows


def variable_rows(lines: list[str]) -> dict[str, list[str]]:
    """``FACEMATCH_`` variable -> the default cells of table rows whose first cell names it."""
    found: dict[str, list[str]] = {}
    for row in table_rows(lines):
        first = next(iter(row.values()), "")
        match = re.fullmatch(r"`(FACEMATCH_[A-Z0-9_]+)`", first)
        if match and "default" in row:
            found.setdefault(match.group(1), []).append(row["default"])
    return found


def documented_default(field: dataclasses.Field) -> str:
    """How the docs write a Settings field's default (``host name`` for ``node``, ...)."""
    if field.default_factory is socket.gethostname:
        return "host name"
    if field.default_factory is config._default_data_dir:
        return "`~/.cache/facematch`"
    if field.name == "threshold" and field.default is None:
        # Unset means each metric's default, chosen on LFW (score_service).
        return ", ".join(f"`{v}` {m}" for m, v in score_service.DEFAULT_THRESHOLDS.items())
    value = field.default
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if value == "":
        return "empty"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def default_matches(field: dataclasses.Field, cell: str) -> bool:
    """Whether a table's default cell states ``field``'s default."""
    expected = documented_default(field)
    return cell == expected or cell.startswith(expected + " ")


def readme_section(title: str) -> list[str]:
    """The prose lines of one ``## title`` section of the README."""
    return doc_section(README, title)


def doc_section(path: Path, title: str) -> list[str]:
    """The prose lines of one ``## title`` section of a markdown file."""
    lines = prose_lines(path.read_text(encoding="utf-8"))
    start = lines.index(f"## {title}") + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    return lines[start:end]


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_and_anchor_resolves(path):
    assert links(path), f"{path.name} has no links at all: the link parser is likely broken"
    assert broken_links(path) == []


def test_the_link_check_finds_a_missing_file_and_a_missing_heading(tmp_path):
    (tmp_path / "other.md").write_text(
        "# Other doc\n\n## Load and faults (through a real Gunicorn)\n"
    )
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n"
        "[ok](other.md#load-and-faults-through-a-real-gunicorn) [self](#page) "
        "[web](https://example.com/x) `[code](missing.md)`\n"
        "![gone](missing.png) [bad anchor](other.md#no-such-heading)\n"
        "```\n[in a fence](fenced.md)\n# not a heading\n```\n"
        "[also bad](#not-a-heading)\n"
    )
    assert broken_links(page) == [
        "missing.png: no such file",
        "other.md#no-such-heading: no heading #no-such-heading in other.md",
        "#not-a-heading: no heading #not-a-heading in page.md",
    ]


@pytest.mark.parametrize(
    ("heading", "slug"),
    [
        ("Load and faults (through a real Gunicorn)", "load-and-faults-through-a-real-gunicorn"),
        ("3. Memory and threads (4 cores, 4-8 GB)", "3-memory-and-threads-4-cores-4-8-gb"),
        (
            "Speed: the baseline against the current pipeline",
            "speed-the-baseline-against-the-current-pipeline",
        ),
        ("`FACEMATCH_MODEL` and snake_case", "facematch_model-and-snake_case"),
    ],
)
def test_github_slugs(heading, slug):
    assert github_slug(heading) == slug


def test_readme_is_at_most_20_kb():
    size = README.stat().st_size
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes; move detail into docs/"


def test_every_doc_is_linked_from_the_readme():
    targets = {t.partition("#")[0] for t in links(README)}
    assert sorted(f"docs/{p.name}" for p in DOCS if f"docs/{p.name}" not in targets) == []


def test_readme_configuration_table_has_one_row_per_setting_with_its_default():
    """Every setting has one row: in the README's table, or, for the camera watcher's
    ``FACEMATCH_WATCH_*`` (one README row names them), in docs/watch.md's settings table."""
    rows: dict[str, list[str]] = {}
    readme = table_rows(readme_section("Configuration"))
    wildcards = [r["variable"] for r in readme if "*" in r.get("variable", "")]
    assert wildcards == ["`FACEMATCH_WATCH_*`"]
    watch = table_rows(doc_section(REPO / "docs" / "watch.md", "Settings"))
    for row in [r for r in readme if "*" not in r["variable"]] + watch:
        match = re.fullmatch(r"`(FACEMATCH_[A-Z0-9_]+)`", row.get("variable", ""))
        assert match, f"not a variable row: {row}"
        rows.setdefault(match.group(1), []).append(row["default"])
    assert watch and all(r["variable"].startswith("`FACEMATCH_WATCH_") for r in watch)
    fields = {config.PREFIX + f.name.upper(): f for f in dataclasses.fields(Settings)}
    assert sorted(rows) == sorted(fields), "the table and config.Settings name different variables"
    assert [name for name, cells in rows.items() if len(cells) != 1] == []
    wrong = {
        name: (cells[0], documented_default(fields[name]))
        for name, cells in rows.items()
        if not default_matches(fields[name], cells[0])
    }
    assert wrong == {}, "documented default, config.py's default"


def test_every_documented_variable_default_in_docs_matches_config():
    fields = {config.PREFIX + f.name.upper(): f for f in dataclasses.fields(Settings)}
    checked, wrong = 0, []
    for path in DOCS:
        lines = prose_lines(path.read_text(encoding="utf-8"))
        for name, cells in variable_rows(lines).items():
            if name not in fields:
                wrong.append(f"{path.name}: {name} is not a config.Settings field")
                continue
            for cell in cells:
                checked += 1
                if not default_matches(fields[name], cell):
                    expected = documented_default(fields[name])
                    wrong.append(f"{path.name}: {name} default {cell!r}, config.py {expected}")
    assert checked, "no FACEMATCH_ rows found in docs/: the table parser is likely broken"
    assert wrong == []


def test_readme_layout_names_every_top_level_module():
    layout = "\n".join(readme_section("Project layout"))
    named = set(re.findall(r"`([^`]+)`", layout))
    missing = sorted(p.name for p in REPO.glob("*.py") if p.name not in named)
    assert missing == []


def test_the_layout_document_names_every_module():
    named = set(re.findall(r"`([^`]+)`", (REPO / "docs" / "layout.md").read_text()))
    folders = ("", "deployment_utils", "benchmarking_utils", "tests")
    modules = [p for folder in folders for p in (REPO / folder).glob("*.py")]
    modules += sorted((REPO / "facematch").glob("**/*.py"))
    missing = sorted(
        str(p.relative_to(REPO))
        for p in modules
        if p.name != "__init__.py" and p.name not in named and str(p.relative_to(REPO)) not in named
    )
    assert missing == []


def test_the_documented_data_dir_default_is_config_default(monkeypatch):
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    field = next(f for f in dataclasses.fields(Settings) if f.name == "data_dir")
    assert documented_default(field) == "`~/.cache/facematch`"
    assert Path(field.default_factory()) == Path("~/.cache/facematch").expanduser()


def named_tests(text: str) -> set[tuple[str, str]]:
    """Every ``tests/<file>.py::<test>`` a document names (parametrisation brackets dropped)."""
    return set(re.findall(r"(tests/[\w/]+\.py)::(\w+)", text))


def test_every_test_the_docs_name_exists():
    """The threat model and the other tables prove their rows by naming tests: each must exist."""
    named = set().union(*(named_tests(p.read_text(encoding="utf-8")) for p in [README, *DOCS]))
    assert len(named) > 20, "the docs name almost no tests: the pattern is likely broken"
    missing = sorted(
        f"{path}::{name}"
        for path, name in named
        if not (REPO / path).is_file()
        or not re.search(rf"^(async )?def {name}\(", (REPO / path).read_text(), re.M)
    )
    assert missing == []
