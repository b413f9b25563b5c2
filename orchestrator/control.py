"""Campaign control: `orch retry CAMPAIGN --failed` and `orch cancel CAMPAIGN`.

A retry forgets a failure in this store and the broker's final mark, and publishes the same job
again. Its attempts count on from the highest attempt seen (jobs/finality.py reset_for_retry),
so the new result supersedes the failure in every store that reads the broker, not only here.

A cancel takes the campaign's jobs out of their queues; a job already
running finishes (stopping a benchmark half-way would leave nothing worth keeping). Submitting the
matrix again queues cancelled jobs anew.
"""

from __future__ import annotations

from dataclasses import dataclass

from jobs.finality import reset_for_retry
from jobs.result import Status
from jobs.spec import JobSpec
from orchestrator.broker import Publisher, connect, queued_jobs, waiting_job_ids
from orchestrator.store import Store


def retry_failed(campaign: str, broker_url: str, store: Store) -> list[JobSpec]:
    store.require_campaign(campaign)
    client = connect(broker_url)
    store.collect(client)
    in_broker = waiting_job_ids(client)
    last_attempt = {
        row.spec.job_id: row.result.attempt
        for row in store.campaign_jobs(campaign)
        if row.result is not None
        and row.result.status not in (Status.OK, Status.SKIPPED)  # skipped: user's choice
        and row.spec.job_id not in in_broker
    }
    failed = sorted(
        (row.spec for row in store.campaign_jobs(campaign) if row.spec.job_id in last_attempt),
        key=JobSpec.load_group,
    )
    publisher = Publisher(broker_url)
    try:
        for job in failed:
            reset_for_retry(client, job.job_id, last_attempt[job.job_id])
            store.forget_result(job.job_id)
            publisher.publish(job)
    finally:
        publisher.close()
    return failed


@dataclass(frozen=True)
class Cancelled:
    removed: int  # taken out of a queue
    running: int  # delivered to a worker: will finish


def cancel(campaign: str, broker_url: str, store: Store) -> Cancelled:
    store.require_campaign(campaign)
    client = connect(broker_url)
    store.collect(client)
    pending = {row.spec.job_id: row.spec.queue for row in store.campaign_jobs(campaign)
               if not row.settled}  # fmt: skip
    removed: list[str] = []
    for queue in sorted(set(pending.values())):
        for raw, job in queued_jobs(client, queue):
            if job.job_id in pending and client.lrem(queue, 1, raw):
                removed.append(job.job_id)
    store.mark_cancelled(removed)
    running = len((set(pending) - set(removed)) & waiting_job_ids(client))
    return Cancelled(len(removed), running)
