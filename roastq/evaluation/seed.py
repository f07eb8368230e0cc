"""Seed the bundled sample documents and agents (idempotent: matched by slug)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from roastq import db
from roastq.db import Q
from roastq.evaluation.samples import load_agents, load_documents


def slugify(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


@dataclass
class Seeded:
    documents: dict[str, str]  # slug -> id
    agents: dict[str, str]  # slug -> id


def seed(conn=None) -> Seeded:
    documents, agents = {}, {}
    with db.transaction(conn) as cur:
        for doc in load_documents():
            cur.execute(Q.seed_document, {"slug": doc.slug})
            doc_id = cur.fetchone()["id"]
            cur.execute(
                Q.seed_document_version,
                {
                    "document_id": doc_id,
                    "title": doc.title,
                    "authors": list(doc.authors),
                    "content": doc.content,
                },
            )
            documents[doc.slug] = str(doc_id)
        for agent in load_agents():
            slug = slugify(agent.name)
            cur.execute(Q.seed_agent, {"slug": slug})
            agent_id = cur.fetchone()["id"]
            cur.execute(
                Q.seed_agent_version,
                {
                    "agent_id": agent_id,
                    "name": agent.name,
                    "description": agent.description,
                    "primary_instructions": agent.primary_instructions,
                    "self_critique_instructions": agent.self_critique_instructions,
                    "provides_grades": agent.provides_grades,
                    "time_limit_s": agent.time_limit_s,
                },
            )
            agents[slug] = str(agent_id)
    return Seeded(documents, agents)
