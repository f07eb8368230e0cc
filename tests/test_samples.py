"""The bundled sample documents and agents load, and are what the rest of the system expects."""

from __future__ import annotations

import pytest

from roastq.evaluation.samples import SampleAgent, SampleDocument, load_agents, load_documents, parse_document


@pytest.fixture(scope="module")
def documents() -> list[SampleDocument]:
    return load_documents()


@pytest.fixture(scope="module")
def agents() -> list[SampleAgent]:
    return load_agents()


def test_six_documents_sorted_by_slug(documents):
    assert len(documents) == 6
    slugs = [d.slug for d in documents]
    assert slugs == sorted(slugs)
    assert len(set(slugs)) == 6


def test_document_fields_populated(documents):
    for d in documents:
        assert d.title and not d.title.startswith("#")
        assert 1 <= len(d.authors) <= 2
        assert all(a and a == a.strip() and "," not in a for a in d.authors)
        # The header lines are metadata, not part of the body.
        assert not d.content.startswith(("#", "Author", "\n"))
        assert d.title not in d.content.split("\n")[0]


def test_some_document_has_two_authors(documents):
    assert any(len(d.authors) == 2 for d in documents)


def test_document_word_counts(documents):
    for d in documents:
        words = len(d.content.split())
        assert 500 <= words <= 1200, (d.slug, words)


def test_documents_have_markdown_structure(documents):
    for d in documents:
        lines = d.content.split("\n")
        assert any(line.startswith("## ") for line in lines), d.slug
    # A list or two across the set, bulleted or numbered.
    assert sum(any(line.startswith(("- ", "1. ")) for line in d.content.split("\n")) for d in documents) >= 2


def test_four_agents_with_fields(agents):
    assert len(agents) == 4
    assert len({a.name for a in agents}) == 4
    for a in agents:
        assert a.name and a.description
        assert 150 <= len(a.primary_instructions.split()) <= 400, a.name
        assert a.self_critique_instructions is None or a.self_critique_instructions.strip()
        assert isinstance(a.provides_grades, bool)
        assert isinstance(a.time_limit_s, int) and a.time_limit_s > 0


def test_agent_variety(agents):
    assert any(not a.provides_grades for a in agents)
    assert any(a.provides_grades for a in agents)
    assert any(a.self_critique_instructions is None for a in agents)
    assert any(a.self_critique_instructions for a in agents)
    assert [a.time_limit_s for a in agents].count(600) == 1
    assert all(a.time_limit_s == 240 for a in agents if a.time_limit_s != 600)


def test_parse_document_header():
    doc = parse_document("x", "# A Title\nAuthor: Ann Lee, Bo Park\n\nBody line.\nMore.\n")
    assert doc == SampleDocument(slug="x", title="A Title", authors=["Ann Lee", "Bo Park"], content="Body line.\nMore.")


@pytest.mark.parametrize("text", ["No title\nAuthor: A\n\nBody", "# T\nBy: A\n\nBody", "# T\nAuthor:  \n\nBody", "# T"])
def test_parse_document_rejects_bad_headers(text):
    with pytest.raises(ValueError):
        parse_document("bad", text)
