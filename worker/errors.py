"""Errors raised on a test box.

    WorkerError                 anything the agent refuses or cannot do
    ├── ConfigError             worker.yaml is wrong (names the file and key)
    ├── ProvisionError          building an engine or writing a model failed
    ├── SettingError            a job's runtime setting could not be applied (the job does not run)
    ├── QueueBusyError          another live worker already consumes this host/configuration queue
    ├── ConsumerStoppedError    Celery's consumer stopped on an error: the agent exits non-zero
    └── ReconfigureError        an unattended switch of the box's configuration is not possible,
                                failed before its reboot, or did not take

A failing *benchmark* is not an exception: it becomes a RunResult with a failure status.
"""

from __future__ import annotations


class WorkerError(Exception):
    """Base of every error the worker raises on purpose."""


class ConfigError(WorkerError):
    """The worker config file is invalid."""


class ProvisionError(WorkerError):
    """An engine build or model generation failed."""


class SettingError(WorkerError):
    """A runtime setting could not be applied, or read back as something else."""


class QueueBusyError(WorkerError):
    """Another worker holds the lease on this queue: two benchmarks would overlap."""


class ConsumerStoppedError(WorkerError):
    """Celery's consumer gave up (it logs "Unrecoverable error"): the supervisor restarts us."""


class ReconfigureError(WorkerError):
    """An unattended reconfiguration (BIOS setting, kernel parameter, reboot) cannot be done."""
