"""Bundled sample data: essays to evaluate and agents to evaluate them with.

The files are package data, read through ``importlib.resources`` so the loaders work from an
installed wheel as well as from a source checkout.

Document files (``documents/<slug>.md``) have the layout::

    # Title
    Author: First Author, Second Author

    Body paragraphs...

``SampleDocument.content`` is the body only: the title and author lines are metadata, stored in
their own fields, as RoastMyPost stores them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

#: Used when an agent entry leaves out ``time_limit_s``.
DEFAULT_TIME_LIMIT_S = 240


@dataclass(frozen=True)
class SampleDocument:
    slug: str
    title: str
    authors: list[str]
    content: str


@dataclass(frozen=True)
class SampleAgent:
    name: str
    description: str
    primary_instructions: str
    self_critique_instructions: str | None
    provides_grades: bool
    time_limit_s: int


def _package_files():
    return resources.files(__name__)


def parse_document(slug: str, text: str) -> SampleDocument:
    """Split a sample file into title, authors and body; ValueError if the header is malformed."""
    lines = text.split("\n")
    if len(lines) < 2 or not lines[0].startswith("# "):
        raise ValueError(f"{slug}: the first line must be '# Title'")
    title = lines[0][2:].strip()
    label, sep, names = lines[1].partition(":")
    if not sep or label.strip().lower() not in ("author", "authors"):
        raise ValueError(f"{slug}: the second line must be 'Author: Name[, Name]'")
    authors = [n.strip() for n in names.split(",") if n.strip()]
    if not title or not authors:
        raise ValueError(f"{slug}: empty title or author list")
    # Blank lines between header and body are layout, not content.
    content = "\n".join(lines[2:]).strip("\n")
    return SampleDocument(slug=slug, title=title, authors=authors, content=content)


def load_documents() -> list[SampleDocument]:
    """All bundled documents, sorted by slug (the file name without ``.md``)."""
    folder = _package_files() / "documents"
    docs = [
        parse_document(e.name[: -len(".md")], e.read_text(encoding="utf-8"))
        for e in folder.iterdir()
        if e.name.endswith(".md")
    ]
    return sorted(docs, key=lambda d: d.slug)


def load_agents() -> list[SampleAgent]:
    """All bundled agents, in file order."""
    raw = json.loads((_package_files() / "agents.json").read_text(encoding="utf-8"))
    return [
        SampleAgent(
            name=a["name"],
            description=a["description"],
            primary_instructions=a["primary_instructions"],
            self_critique_instructions=a.get("self_critique_instructions") or None,
            provides_grades=bool(a.get("provides_grades", False)),
            time_limit_s=int(a.get("time_limit_s", DEFAULT_TIME_LIMIT_S)),
        )
        for a in raw
    ]
