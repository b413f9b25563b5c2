"""`orch export`: a campaign's stored results, whole, for other tools.

Example::

    with open("c1.jsonl", "w") as out:
        export_jsonl(store, "c1", out)     # one RunResult JSON a line; returns how many
"""

from __future__ import annotations

from typing import TextIO

from orchestrator.store import Store


def export_jsonl(store: Store, campaign: str, out: TextIO) -> int:
    """Write every stored result of `campaign`, put back together (`Store.stored_result`), one
    JSON object a line, in job id order; return how many. One result is in memory at a time."""
    count = 0
    for job_id in store.campaign_job_ids(campaign):
        result = store.stored_result(job_id)
        if result is None:
            continue  # a job still waiting, cancelled or skipped before it ran
        out.write(result.model_dump_json())
        out.write("\n")
        count += 1
    return count
