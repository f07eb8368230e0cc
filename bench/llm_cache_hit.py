"""Response-cache hit latency (issue 5): ``Claude.call_tool`` answered from the Postgres cache, for a
real analysis request (a bundled document and agent, the analysis tool and schema). Figure: the
median, p95 and p99 time of a hit, from the call to the validated tool input, with no HTTP request.

    .venv/bin/python bench/llm_cache_hit.py [--hits 2000]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import connect, fresh_database, machine, median, percentile  # noqa: E402

TARGET_MS = 5.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hits", type=int, default=2000)
    a = p.parse_args()
    print(f"# {machine()}")
    fresh_database("roastq_bench_llm")
    from roastq.evaluation import pipeline
    from roastq.evaluation.seed import seed
    from roastq.llm.client import Claude
    from roastq.settings import get_settings
    from roastq.simulator.server import SimConfig, Simulator

    seeded = seed()
    conn = connect()
    job = next(iter(seeded.documents.values())), next(iter(seeded.agents.values()))
    with conn.cursor() as cur:  # the pipeline's own inputs, without a job: a document and an agent
        cur.execute(
            "SELECT dv.title, dv.authors, dv.content, dv.markdown_prepend, av.id, av.name, "
            "av.primary_instructions, av.provides_grades FROM document_versions dv, agent_versions av "
            "WHERE dv.document_id = %s AND av.agent_id = %s",
            job,
        )
        title, authors, content, prepend, av_id, name, instructions, grades = cur.fetchone()
    inputs = pipeline.JobInputs(
        job_id="",
        evaluation_id="",
        document_version_id="",
        agent_version_id=str(av_id),
        agent_id="",
        agent_name=name,
        title=title,
        authors=authors,
        content=content,
        markdown_prepend=prepend,
        primary_instructions=instructions,
        self_critique_instructions=None,
        provides_grades=grades,
    )
    system = [
        {"type": "text", "text": pipeline.ANALYSIS_FRAME},
        {"type": "text", "text": f"Agent: {name}\n\n{instructions}"},
    ]
    with Simulator(SimConfig(latency_ms=50, jitter_ms=0)) as sim:
        claude = Claude(get_settings().replace(anthropic_base_url=sim.url, llm_cache_enabled=True))

        def call():
            return claude.call_tool(
                step="analysis",
                system=system,
                prompt=pipeline.analysis_prompt(inputs),
                tool=pipeline.analysis_tool(grades),
                cache_seed=f"agent-version:{av_id}",
            )

        miss_started = time.perf_counter()
        assert not call().cached
        miss_ms = (time.perf_counter() - miss_started) * 1000
        times = []
        for _ in range(a.hits):
            started = time.perf_counter()
            result = call()
            times.append((time.perf_counter() - started) * 1000)
            assert result.cached
        requests = len(sim.requests())
    result = {
        "hits": a.hits,
        "http_requests": requests,
        "prompt_chars": len(pipeline.analysis_prompt(inputs)),
        "miss_ms (simulator latency 50 ms)": round(miss_ms, 2),
        "hit_median_ms": round(median(times), 3),
        "hit_p95_ms": round(percentile(times, 0.95), 3),
        "hit_p99_ms": round(percentile(times, 0.99), 3),
    }
    print(json.dumps(result, indent=2))
    ok = result["hit_median_ms"] < TARGET_MS and requests == 1
    print(
        f"cache hit median {result['hit_median_ms']} ms (target < {TARGET_MS} ms), {requests} HTTP request for "
        f"{a.hits + 1} calls: {'PASS' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
