"""A campaign's ETA (orchestrator/eta.py): from earlier runs, labelled with its basis."""

from __future__ import annotations

from jobs.spec import JobSpec, Workload
from orchestrator.eta import campaign_eta
from orchestrator.store import Store


def _job(host: str, context: int, model: str = "m") -> JobSpec:
    return JobSpec(campaign="c", host=host, engine="llama-bench", backend="cpu", model=model,
                   context=context, workload=Workload())  # fmt: skip


def test_eta_is_the_longest_hosts_sum_of_medians_with_its_n() -> None:
    earlier = {
        Store.shape_key(_job("a", 512)): [10.0, 30.0, 20.0],  # median 20
        Store.shape_key(_job("a", 1024)): [40.0],
        Store.shape_key(_job("b", 512)): [5.0, 7.0],  # median 6
    }
    pending = [_job("a", 512), _job("a", 1024), _job("b", 512), _job("b", 2048)]
    eta = campaign_eta(pending, earlier)
    # b's 2048 job was never run: the median of b's runs of the same engine and model stands in
    assert eta.per_host_s == {"a": 60.0, "b": 12.0}
    assert eta.seconds == 60.0
    assert (eta.exact, eta.similar, eta.unknown) == (3, 1, 0)
    assert eta.runs == 6
    assert eta.text() == (
        "ETA ~60 s (estimate: n=6 earlier runs; 1 job(s) from runs of the same engine and model)"
    )


def test_jobs_with_no_earlier_run_are_counted_not_guessed() -> None:
    eta = campaign_eta([_job("a", 512, model="new")], {Store.shape_key(_job("a", 512)): [9.0]})
    assert eta.unknown == 1 and eta.seconds == 0
    assert eta.text() == "ETA: unknown (no earlier run of any of the 1 jobs left)"
    assert campaign_eta([], {}).text() == "ETA: done"
    assert campaign_eta([_job("a", 512)], {"not json": [1.0]}).unknown == 1
