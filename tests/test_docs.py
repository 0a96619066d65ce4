"""The README and docs/ say only what the repository has: links that resolve, make targets, commands and
options that exist, paths that are there; and the README stays short enough to route a newcomer.

Each check is a function that returns the problems it finds; the tests want none, and
`test_checks_fire_on_broken_docs` feeds every check a page with one of each mistake, so none can pass blind.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 200
# Backticked paths under these folders must exist in the repository.
PATH_PREFIXES = ("converters/", "clients/", "tests/", "docs/", ".ci/", "configs/")
# A shell command ends at these; what follows is another command or a redirection.
COMMAND_END = re.compile(r"\s(?:\||>|&&|;|#)|\|")
# An inline code span: a run of backticks, then anything (line breaks too) up to the same run.
CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.DOTALL)


def doc_pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


@dataclass(frozen=True)
class Snippet:
    """A piece of code in a page (an inline code span or one line of a fenced block), with where it is."""

    text: str
    line: int
    fenced: bool  # a line of a fenced block (a shell session, a tree, a program), not an inline code span


@dataclass(frozen=True)
class Page:
    path: Path
    text: str

    @property
    def name(self) -> str:
        return str(self.path.relative_to(ROOT)) if self.path.is_relative_to(ROOT) else self.path.name

    def _parts(self) -> tuple[str, list[Snippet]]:
        """The prose with code blanked out (same length, so offsets keep their line), and the code snippets."""
        prose, code = [], []
        fence = None
        for number, line in enumerate(self.text.splitlines(keepends=True), start=1):
            marker = re.match(r"\s*(```+|~~~+)", line)
            if fence is None and marker:
                fence = marker.group(1)
                prose.append(re.sub(r"\S", " ", line))
            elif fence is not None:
                if marker and marker.group(1).startswith(fence):
                    fence = None
                else:
                    code.append(Snippet(line.rstrip("\n"), number, True))
                prose.append(re.sub(r"\S", " ", line))
            else:
                prose.append(line)
        text = "".join(prose)
        spans = [Snippet(" ".join(m.group(2).split()), text.count("\n", 0, m.start()) + 1, False)
                 for m in CODE_SPAN.finditer(text)]
        blanked = CODE_SPAN.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)
        return blanked, code + spans

    @property
    def prose(self) -> str:
        return self._parts()[0]

    @property
    def code(self) -> list[Snippet]:
        return self._parts()[1]


def load(path: Path) -> Page:
    return Page(path, path.read_text(encoding="utf-8"))


# --- the README ---------------------------------------------------------------------------------------------------

def readme_length_problems(page: Page) -> list[str]:
    lines = len(page.text.splitlines())
    return [f"{page.name} has {lines} lines; at most {README_MAX_LINES}"] if lines > README_MAX_LINES else []


ISSUE_REFERENCE = re.compile(r"\b(?:issues?|PR|pull request)\s*#?\d+|(?<![&\w])#\d+\b", re.IGNORECASE)


def issue_reference_problems(page: Page) -> list[str]:
    return [
        f"{page.name}:{page.text.count(chr(10), 0, m.start()) + 1}: issue reference {m.group(0)!r}"
        for m in ISSUE_REFERENCE.finditer(page.text)
    ]


# --- links ----------------------------------------------------------------------------------------------------------

def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: markup and punctuation dropped, lower case, spaces as hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return "".join(ch for ch in text if ch.isalnum() or ch in " -_").replace(" ", "-")


def anchors(page: Page) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    fenced = False
    for line in page.text.splitlines():
        if re.match(r"\s*(```|~~~)", line):
            fenced = not fenced
            continue
        heading = None if fenced else re.match(r" {0,3}#{1,6}\s+(.*?)(?:\s+#+)?\s*$", line)
        if heading:
            slug = github_slug(heading.group(1))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            found.add(slug if count == 0 else f"{slug}-{count}")
    return found


LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)|^\s*\[[^\]]+\]:\s*(\S+)", re.MULTILINE)


def link_problems(page: Page) -> list[str]:
    problems = []
    prose = page.prose
    for match in LINK.finditer(prose):
        target = match.group(1) or match.group(2)
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
            continue  # a URL: not checked offline
        where = f"{page.name}:{prose.count(chr(10), 0, match.start()) + 1}"
        path_part, _, anchor = target.partition("#")
        file = (page.path.parent / path_part).resolve() if path_part else page.path
        if not file.exists():
            problems.append(f"{where}: link to {target!r}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(load(file)):
            problems.append(f"{where}: link to {target!r}: {file.name} has no heading with that anchor")
    return problems


# --- make targets ---------------------------------------------------------------------------------------------------

def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([A-Za-z][\w.-]*)\s*:(?!=)", text, re.MULTILINE))


MAKE = re.compile(r"(?:^|(?<=[\s;&|(]))make\s+([^\n]*)")


def make_problems(page: Page, targets: set[str]) -> list[str]:
    problems = []
    for snippet in page.code:
        for match in MAKE.finditer(snippet.text):
            words = COMMAND_END.split(match.group(1))[0].split()
            # The target is the first word that is not a VAR=value, a flag or an optional [VAR=value].
            target = next((w for w in words if not re.match(r"[\[(-]|\w+=", w)), None)
            if target is not None and target not in targets:
                problems.append(f"{page.name}:{snippet.line}: `make {target}`: no such target in the Makefile")
    return problems


# --- commands and options -------------------------------------------------------------------------------------------

CLI = re.compile(r"(?:\bpython3?\s+-m\s+converters|(?<![\w-])cnclip-convert)(?=\s|$)([^\n]*)")
OPTION = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")


def click_options(command: click.Command) -> set[str]:
    names = {"--help", "-h"}
    for param in command.params:
        if isinstance(param, click.Option):
            names.update(param.opts + param.secondary_opts)
    return names


def cli_problems(page: Page) -> list[str]:
    from converters.cli import COMMANDS, cli

    context = click.Context(cli)
    problems = []
    for snippet in page.code:
        for match in CLI.finditer(snippet.text):
            words = COMMAND_END.split(match.group(1))[0].split()
            group_options = []
            while words and words[0].startswith("-"):
                group_options.append(words.pop(0).split("=")[0])
            where = f"{page.name}:{snippet.line}"
            problems += [f"{where}: `{o}` is not an option of the command line" for o in group_options
                         if o not in click_options(cli)]
            if not words or words[0] in ("…", "..."):
                continue  # `python -m converters …`: any command
            name, rest = words[0], " ".join(words[1:])
            if name not in COMMANDS:
                problems.append(f"{where}: `{name}` is not a command (known: {', '.join(COMMANDS)})")
                continue
            known = click_options(cli.get_command(context, name))
            for option in OPTION.findall(rest):
                option = option.split("=")[0]
                if option not in known:
                    problems.append(f"{where}: `{name} {option}`: no such option")
    return problems


# --- paths ----------------------------------------------------------------------------------------------------------

def path_problems(page: Page) -> list[str]:
    """Backticked paths; fenced blocks are left alone (a tree there names folders relative to its root)."""
    problems = []
    for snippet in page.code:
        if snippet.fenced:
            continue
        for word in snippet.text.split():
            word = word.strip("\"'()[],;:").rstrip(".")
            word = word.split("::")[0]  # a pytest node id
            if "/" not in word or not word.startswith(PATH_PREFIXES):
                continue
            pattern = re.sub(r"<[^>]*>|…|\{[^}]*\}", "*", word)
            hits = list(ROOT.glob(pattern.rstrip("/"))) if "*" in pattern else [ROOT / pattern]
            if not any(hit.is_dir() if word.endswith("/") else hit.exists() for hit in hits):
                problems.append(f"{page.name}:{snippet.line}: `{word}`: no such path in the repository")
    return problems


# --- the tests ------------------------------------------------------------------------------------------------------

PAGES = [load(path) for path in doc_pages()]
IDS = [page.name for page in PAGES]


def test_readme_is_short():
    assert readme_length_problems(load(ROOT / "README.md")) == []


def test_readme_names_no_issue_numbers():
    assert issue_reference_problems(load(ROOT / "README.md")) == []


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_links_resolve(page):
    assert link_problems(page) == []


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_make_targets_exist(page):
    assert make_problems(page, makefile_targets()) == []


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_commands_and_options_exist(page):
    assert cli_problems(page) == []


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_paths_exist(page):
    assert path_problems(page) == []


def test_docs_pages_are_found():
    names = set(IDS)
    assert {"README.md", "docs/index.md", "docs/converting.md", "docs/search-and-serve.md"} <= names


def test_checks_fire_on_broken_docs(tmp_path):
    """One of each mistake, in a page beside a real one: every check must name it."""
    (tmp_path / "other.md").write_text("# Other page\n\n## A `code` heading, with punctuation!\n", encoding="utf-8")
    broken = tmp_path / "broken.md"
    broken.write_text(
        "\n".join([
            "# Broken",
            "See issue 12 and #34.",
            "[missing](nowhere.md), [bad anchor](other.md#no-such-heading), [good](other.md#a-code-heading-with-punctuation)",
            "[url](https://example.org/x.md) and [self](#broken)",
            "`make convert MODEL=x`, `make no-such-target`, `make [ARCH=x] client`",
            "```sh",
            "make also-missing OUT=x   # comment",
            "python -m converters convert --no-such-option x | grep --not-checked",
            "python -m converters frobnicate",
            "cnclip-convert index --stage onnx-sim --artifacts x",
            "```",
            "`python -m converters search --top 3 --frobnicate x` and `converters/no_such_module.py`, `tests/test_docs.py`",
            "`converters/export/configs/<MODEL>.yaml` and `clients/cpp/src/` and `docs/nope/`",
            *["filler"] * README_MAX_LINES,
        ]),
        encoding="utf-8",
    )
    page = load(broken)
    assert len(readme_length_problems(page)) == 1
    assert [p.split(": ", 1)[1] for p in issue_reference_problems(page)] == ["issue reference 'issue 12'",
                                                                            "issue reference '#34'"]
    def named(problems: list[str], *words: str) -> bool:
        return len(problems) == len(words) and all(any(word in p for p in problems) for word in words)

    assert named(link_problems(page), "nowhere.md", "no-such-heading")
    assert named(make_problems(page, makefile_targets()), "no-such-target", "also-missing")
    assert named(cli_problems(page), "convert --no-such-option", "`frobnicate`", "search --frobnicate")
    assert named(path_problems(page), "converters/no_such_module.py", "docs/nope/")
