"""`orch retry CAMPAIGN --failed`: run again the jobs whose final result was a failure.

A retry forgets the failure everywhere it is kept (the store's result, the broker's final mark
and delivery count) and publishes the same job again, so the new attempt is counted from 1 and
recorded like a first run. Jobs still queued or running are left alone.
"""

from __future__ import annotations

from jobs.protocol import ATTEMPTS_KEY, FINAL_KEY
from jobs.result import Status
from jobs.spec import JobSpec
from orchestrator.broker import Publisher, connect, waiting_job_ids
from orchestrator.errors import OrchError
from orchestrator.store import Store


def retry_failed(campaign: str, broker_url: str, store: Store) -> list[JobSpec]:
    if not store.has_campaign(campaign):
        raise OrchError(f"no campaign {campaign!r} in {store.path}")
    client = connect(broker_url)
    store.collect(client)
    in_broker = waiting_job_ids(client)
    failed = sorted(
        (
            row.spec
            for row in store.campaign_jobs(campaign)
            if row.result is not None
            and row.result.status is not Status.OK
            and row.spec.job_id not in in_broker
        ),
        key=JobSpec.load_group,
    )
    publisher = Publisher(broker_url)
    try:
        for job in failed:
            client.delete(
                FINAL_KEY.format(job_id=job.job_id), ATTEMPTS_KEY.format(job_id=job.job_id)
            )
            store.forget_result(job.job_id)
            publisher.publish([job])
    finally:
        publisher.close()
    return failed
