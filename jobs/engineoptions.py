"""Which engine can apply which per-job option (flash_attention, kv_offload, think), and why
the others cannot: the one rule that the matrix check (at submit, with file:line) and the
worker (before it runs a job that reached it anyway) both apply.

    >>> option_refusal("ollama", "flash_attention")[:52]
    'ollama cannot set flash_attention per job: Ollama se'
    >>> option_refusal("llama-bench", "kv_offload") is None
    True

What each engine does with the ones it takes (upstream sources):
- llama-bench: `-fa 1|0` and `-nkvo 0|1` (tools/llama-bench/llama-bench.cpp: -fa takes
  on/off/auto or 1/0/-1, -nkvo 0|1); its JSON echoes `flash_attn` (1, 0; -1 = auto) and
  `no_kv_offload`, checked against the job.
- llama-server: `-fa on|off` and `-kvo`/`-nkvo` (common/arg.cpp: `-fa [on|off|auto]`, default
  auto); its load log prints `flash_attn = enabled|disabled` (src/llama-context.cpp), checked.
- lmstudio: `flash_attention` and `offload_kv_cache_to_gpu` of `POST /api/v1/models/load`
  (lmstudio-ai/docs c6854fb, 1_developer/2_rest/load.md), checked against the echoed config.
  `lms load` has no flag for either (lmstudio-ai/lms 07b7252, src/subcommands/load.ts), so a
  worker that loads through `lms` refuses the job with that reason.
- ollama: `think: true|false` on each request (api/types.go at ollama/ollama fb30760).
"""

from __future__ import annotations

from jobs.load import load_refusal
from jobs.spec import ENGINE_OPTIONS, JobSpec

# option -> engines that apply it to one job
ENGINES_TAKING: dict[str, tuple[str, ...]] = {
    "flash_attention": ("llama-bench", "llama-server", "lmstudio"),
    "kv_offload": ("llama-bench", "llama-server", "lmstudio"),
    "think": ("ollama",),
}

# (engine, option) -> why it cannot; engines not named here are refused in general words.
_WHY_NOT: dict[tuple[str, str], str] = {
    ("ollama", "flash_attention"): (
        "Ollama sets flash attention for the whole server (the OLLAMA_FLASH_ATTENTION "
        "environment variable of `ollama serve`), not per request; set it on the box and "
        "record it in the host's configuration instead"
    ),
    ("ollama", "kv_offload"): (
        "Ollama's request options (api/types.go, Runner) have no KV-cache placement"
    ),
    ("openai", "flash_attention"): (
        "an OpenAI-compatible server was started by someone else with its own load options; "
        "the chat API cannot change them"
    ),
    ("openai", "kv_offload"): (
        "an OpenAI-compatible server was started by someone else with its own load options; "
        "the chat API cannot change them"
    ),
    ("llama-bench", "think"): "llama-bench measures synthetic tokens, with no chat template",
    ("llama-server", "think"): (
        "orch sends llama-server raw token prompts (/completion, no chat template), where "
        "thinking does not apply; the `openai` engine against its /v1 route uses the template"
    ),
    ("lmstudio", "think"): (
        "LM Studio documents its reasoning setting only on /api/v1/chat (chat.md), whose "
        "answers do not say which runtime ran, and orch measures through "
        "/api/v0/chat/completions to verify the runtime; the model's default applies"
    ),
    ("openai", "think"): (
        "OpenAI-compatible servers have no one documented switch (reasoning_effort is "
        "OpenAI's, chat_template_kwargs.enable_thinking llama-server's and vLLM's)"
    ),
}


def option_refusal(engine: str, option: str) -> str | None:
    """Why `engine` cannot apply `option` to a job, or None when it can."""
    if engine in ENGINES_TAKING[option]:
        return None
    why = _WHY_NOT.get((engine, option), f"only {', '.join(ENGINES_TAKING[option])} apply it")
    return f"{engine} cannot set {option} per job: {why}"


def job_option_problem(job: JobSpec) -> str | None:
    """The first option `job` sets that its engine cannot apply, or a load workload it cannot
    run (the worker's check)."""
    for option in ENGINE_OPTIONS:
        if getattr(job, option) is not None:
            refusal = option_refusal(job.engine, option)
            if refusal is not None:
                return refusal
    return load_refusal(job.engine) if job.workload.load is not None else None


def options_asked(job: JobSpec) -> dict[str, str | bool]:
    """The engine options `job` sets, as it carries them ("on"/"off", kv_offload a bool)."""
    return {k: getattr(job, k) for k in ENGINE_OPTIONS if getattr(job, k) is not None}


def option_mismatch(job: JobSpec, ran: dict[str, str | bool | None], source: str) -> str | None:
    """Why the engine did not run with the options `job` asked for, with the evidence; None
    when every option it reported agrees (one it did not report, None, is not checked).
    `ran` uses the job's own spelling: "on"/"off" for switches, a bool for kv_offload."""
    wrong = [
        f"{option} {_shown(ran[option])}, not the job's {_shown(asked)}"
        for option, asked in options_asked(job).items()
        if ran.get(option) is not None and ran[option] != asked
    ]
    if not wrong:
        return None
    return f"{job.engine} ran with {'; '.join(wrong)} ({source})"


def _shown(value: str | bool | None) -> str:
    return str(value).lower()
