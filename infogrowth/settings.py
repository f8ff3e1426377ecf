"""One typed settings object, read from the environment (INFOGROWTH_*) and the CLI."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from typing import Any, get_type_hints

ENV_PREFIX = "INFOGROWTH_"


@dataclass(frozen=True)
class Settings:
    # --- algorithm -------------------------------------------------------------------------
    delta: float = 0.4  # alignment threshold: below it a sample needs a new caption
    k: int = 4  # neighbours queried for the gain
    hnsw_m: int = 48  # values of the official InfoGrowth code
    hnsw_ef_construction: int = 100
    hnsw_ef: int = 32
    gain_mean: str = "arithmetic"  # arithmetic | geometric | harmonic
    policy: str = "threshold"  # threshold | budget | all
    tau: float = 0.05  # gain threshold of the threshold policy
    budget: int = 1000  # samples kept by the budget policy
    seed: int = 0
    mode: str = "multimodal"  # multimodal (image+caption) | single (image+label, classifier)
    label_confidence: float = 0.5  # single-modal: P(c|d) below this -> relabel to argmax
    # --- models ----------------------------------------------------------------------------
    encoder: str = "packaged"  # packaged | clip | precomputed
    clip_model: str = ""  # local directory or hub id for the clip encoder
    captioner: str = "label"  # label | transformers | openai
    captioner_model: str = ""  # local directory (transformers) or model name (openai)
    captioner_url: str = ""  # OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1
    device: str = "auto"  # auto | cpu | cuda
    batch_size: int = 32
    # --- infrastructure --------------------------------------------------------------------
    kafka_bootstrap: str = "127.0.0.1:9092"
    s3_endpoint: str = "127.0.0.1:9000"
    s3_access_key: str = "infogrowth"
    s3_secret_key: str = "infogrowth-secret"
    s3_bucket: str = "infogrowth"
    s3_secure: bool = False
    data_dir: str = ".data"
    # --- topics ----------------------------------------------------------------------------
    topic_raw: str = "raw-samples"
    topic_scored: str = "scored"
    topic_recaption: str = "recaption"
    topic_recaptioned: str = "recaptioned"  # new captions on their way back to scoring
    topic_accepted: str = "accepted"
    topic_rejected: str = "rejected"
    topic_dead_letter: str = "dead-letter"
    app_id: str = "infogrowth"
    take_within: float = 1.0  # seconds an agent waits to fill a batch
    worker_roles: str = "inference,captioner,curator"  # agents this worker runs
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_env(
        cls,
        environ: dict[str, str] | None = None,
        defaults: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> Settings:
        """Built-in defaults, then ``defaults`` (e.g. a command's own), then INFOGROWTH_<FIELD>
        variables, then explicit overrides (the CLI)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = dict(defaults or {})
        hints = get_type_hints(cls)
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None and f.name != "extra":
                values[f.name] = _parse(hints[f.name], raw, f.name)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return replace(cls(), **values)

    def __post_init__(self) -> None:
        if not 0.0 <= self.delta <= 1.0:
            raise ValueError(f"delta must be in [0, 1], got {self.delta}")
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.gain_mean not in ("arithmetic", "geometric", "harmonic"):
            raise ValueError(
                f"gain_mean must be arithmetic|geometric|harmonic, got {self.gain_mean}"
            )
        if self.policy not in ("threshold", "budget", "all"):
            raise ValueError(f"policy must be threshold|budget|all, got {self.policy}")
        if self.mode not in ("multimodal", "single"):
            raise ValueError(f"mode must be multimodal|single, got {self.mode}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


def _parse(kind: Any, raw: str, name: str) -> Any:
    try:
        if kind is bool:
            return raw.strip().lower() in ("1", "true", "yes", "on")
        if kind in (int, float):
            return kind(raw)
        return raw
    except ValueError as exc:
        raise ValueError(f"{ENV_PREFIX}{name.upper()}={raw!r}: {exc}") from None
