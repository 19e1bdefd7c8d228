"""MkDocs hooks (``mkdocs.yml``): the top-level Markdown files as pages, their links kept true.

``README.md`` is the home page and the other top-level documents are pages of their own, read
from where they are: nothing is copied into ``docs/``. A relative link is read from the file it
is written in, so one link works on GitHub and on the site: a link to a published file becomes a
link to its page (anchor kept, and checked by ``mkdocs build --strict``); a link to another file
of the repository (an example, a test) becomes a link to it in the repository when ``repo_url``
is set in ``mkdocs.yml``, and its name in code otherwise. A link to a file that does not exist is
left as written, for ``--strict`` to report.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

# top-level file -> its page on the site
PUBLISHED = {
    "README.md": "index.md",
    "CHANGELOG.md": "changelog.md",
    "CONTRIBUTING.md": "contributing.md",
    "SECURITY.md": "security-policy.md",
    "BENCHMARKS.md": "benchmarks.md",
}
SOURCE_OF_PAGE = {page: source for source, page in PUBLISHED.items()}

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+).*?\1", re.DOTALL)
LINK = re.compile(r"(?<!!)\[(?P<text>[^\]\n]*)\]\((?P<target>[^)\s]+)\)")
EXTERNAL = re.compile(r"^([a-z][a-z0-9+.-]*:|#|/)", re.IGNORECASE)


def on_files(files: Files, config: MkDocsConfig) -> Files:
    root = repository_root(config)
    for source, page in PUBLISHED.items():
        if (root / source).is_file():
            files.append(File.generated(config, page, abs_src_path=str(root / source)))
    return files


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    root = repository_root(config)
    source = SOURCE_OF_PAGE.get(page.file.src_uri)
    written_in = root / source if source else Path(config.docs_dir) / page.file.src_uri
    rewrite = LinkRewriter(root, Path(config.docs_dir), written_in, page.file.src_uri, config)
    return outside_code(markdown, lambda text: LINK.sub(rewrite, text))


def repository_root(config: MkDocsConfig) -> Path:
    return Path(config.config_file_path).resolve().parent


def outside_code(markdown: str, change: Callable[[str], str]) -> str:
    """``change`` applied to the text outside fenced code blocks and code spans."""
    parts: list[str] = []
    position = 0
    for block in FENCE.finditer(markdown):
        parts.append(outside_spans(markdown[position : block.start()], change))
        parts.append(block.group(0))
        position = block.end()
    parts.append(outside_spans(markdown[position:], change))
    return "".join(parts)


def outside_spans(text: str, change: Callable[[str], str]) -> str:
    parts: list[str] = []
    position = 0
    for span in CODE_SPAN.finditer(text):
        parts.append(change(text[position : span.start()]))
        parts.append(span.group(0))
        position = span.end()
    parts.append(change(text[position:]))
    return "".join(parts)


class LinkRewriter:
    """One page's relative links, read from the file the page's Markdown is written in."""

    def __init__(
        self, root: Path, docs: Path, written_in: Path, page_uri: str, config: MkDocsConfig
    ) -> None:
        self.root = root
        self.docs = docs.resolve()
        self.written_in = written_in
        self.page_dir = posixpath.dirname(page_uri)
        self.repo_url = (config.repo_url or "").rstrip("/")
        self.edit_branch = branch_of(config.edit_uri or "")

    def __call__(self, match: re.Match[str]) -> str:
        text, target = match.group("text"), match.group("target")
        if EXTERNAL.match(target):
            return match.group(0)
        path, hash_, anchor = target.partition("#")
        resolved = (self.written_in.parent / path).resolve()
        if not resolved.exists() or not resolved.is_relative_to(self.root):
            return match.group(0)  # broken: --strict reports it
        if resolved.is_relative_to(self.docs):
            page = resolved.relative_to(self.docs).as_posix()
        else:
            in_repo = resolved.relative_to(self.root).as_posix()
            if in_repo not in PUBLISHED:
                return self.repository_link(text, in_repo)
            page = PUBLISHED[in_repo]
        return f"[{text}]({posixpath.relpath(page, self.page_dir or '.')}{hash_}{anchor})"

    def repository_link(self, text: str, in_repo: str) -> str:
        if self.repo_url:
            return f"[{text}]({self.repo_url}/blob/{self.edit_branch}/{in_repo})"
        if text.strip("`") == in_repo:
            return f"`{in_repo}`"
        return f"{text} (`{in_repo}` in the repository)"


def branch_of(edit_uri: str) -> str:
    """The branch of an ``edit_uri`` such as ``edit/main/docs/``; ``main`` by default."""
    parts = edit_uri.strip("/").split("/")
    return parts[1] if len(parts) > 1 and parts[0] in ("edit", "blob") else "main"
