"""Fleet deployment: install and run `orch worker` agents on the boxes of an inventory over SSH.

inventory (fleet.yaml) -> deploy (per box, in parallel: remote, boxfacts, bundle, units,
service, state) -> registry (did the agent register on the broker?); manage for status,
restart, stop, logs and facts; cli for `orch fleet`.
"""
