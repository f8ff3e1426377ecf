"""One typed settings object, assembled from layers; each overrides the ones before it:

built-in defaults < a command's own defaults < a YAML config file (``--config`` or
INFOGROWTH_CONFIG) < INFOGROWTH_<NAME> variables < command-line flags.

A bad value in any layer is a one-line ``SettingsError`` naming the layer and the field.
Secret fields (marked with ``secret()``) never show their value: repr, ``--help`` and error
messages print ``***`` instead.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints
from urllib.parse import urlsplit

ENV_PREFIX = "INFOGROWTH_"
CONFIG_ENV = ENV_PREFIX + "CONFIG"
MASK = "***"
WORKER_ROLES = ("inference", "captioner", "curator")
# The built-in S3 credentials are those of the gateway infra/ starts on this machine.
LOCAL_S3_SECRET_KEY = "infogrowth-secret"


def secret(default: str) -> Any:
    """A field whose value is never shown (repr, --help, error messages print *** instead)."""
    return field(default=default, metadata={"secret": True})


@dataclass(frozen=True)
class Settings:
    # --- algorithm -------------------------------------------------------------------------
    delta: float = 0.4  # alignment threshold: below it a sample needs a new caption
    k: int = 4  # neighbours queried for the gain
    # HNSW graph: 1.2-2.0x the gain speed of the official code's M=48/efC=100/ef=32, recall@4
    # higher on two of three test sets, lower on one (README, bench/gain_bench.py). Gains
    # are exact while at most ``exact_limit`` samples are indexed, whatever these are.
    hnsw_m: int = 16
    hnsw_ef_construction: int = 64
    hnsw_ef: int = 128
    # Indexed samples searched exactly, with no HNSW graph (core/gain.py EXACT_PREFIX; runs
    # recorded before this setting existed used 30,000 and replay with it).
    exact_limit: int = 100_000
    gain_mean: str = "arithmetic"  # arithmetic | geometric | harmonic
    policy: str = "threshold"  # threshold | budget | all
    tau: float = 0.05  # gain threshold of the threshold policy
    budget: int = 1000  # samples kept by the budget policy
    dup_distance: float = 0.15  # image cosine distance to a kept image at or below: duplicate
    dup_hash_bits: int = 64  # perceptual image hash size (16 | 36 | 64; 0: embeddings alone)
    dup_hash_distance: int = 8  # hash bits from a kept image at or below: duplicate
    dup_hash_near: int = 8  # within dup_distance, hash bits at or below: duplicate
    # --- DataComp-style filters (infogrowth/core/filters.py); 0 / 1.0 switch one off -------------
    min_side: int = 8  # pixels: smaller images (tracking pixels, icons) are image_shape
    max_aspect: float = 3.0  # long / short side above it: image_shape
    min_words: int = 0  # caption_length
    max_words: int = 0  # caption_length
    max_caption_repeats: int = 0  # more occurrences of one caption: caption_repeated
    alignment_top: float = 1.0  # keep this top fraction by alignment (online): low_alignment
    seed: int = 0
    mode: str = "multimodal"  # multimodal (image+caption) | single (image+label, classifier)
    label_confidence: float = 0.5  # single-modal: P(given label | d) below this -> doubtful
    label_action: str = "relabel"  # single-modal, doubtful label: relabel | reject (mislabelled)
    label_model: str = ""  # single-modal: local transformers image classifier (else kNN vote)
    # --- models ----------------------------------------------------------------------------
    # auto (the default): packaged, loaded only for rows without both embeddings; naming
    # packaged or clip explicitly makes precomputed rows of another size an error.
    encoder: str = "auto"  # auto | packaged | clip | precomputed
    clip_model: str = ""  # local directory or hub id for the clip encoder
    captioner: str = "none"  # none | transformers | openai | label (opt-in, not a cleaner)
    captioner_model: str = ""  # local directory (transformers) or model name (openai)
    captioner_url: str = ""  # OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1
    device: str = "auto"  # auto | cpu | cuda
    batch_size: int = 32
    # --- infrastructure --------------------------------------------------------------------
    kafka_bootstrap: str = "127.0.0.1:9092"
    s3_endpoint: str = "127.0.0.1:9000"
    s3_access_key: str = "infogrowth"
    s3_secret_key: str = secret(LOCAL_S3_SECRET_KEY)  # accepted for a local endpoint only
    s3_bucket: str = "infogrowth"
    s3_secure: bool = False
    data_dir: str = ".data"
    schema_registry_url: str = ""  # Confluent Schema Registry: its ids in records ("" = fixed ids)
    # --- topics ----------------------------------------------------------------------------
    topic_raw: str = "raw-samples"
    topic_scored: str = "scored"
    topic_recaption: str = "recaption"
    topic_recaptioned: str = "recaptioned"  # new captions on their way back to scoring
    topic_accepted: str = "accepted"
    topic_rejected: str = "rejected"
    topic_dead_letter: str = "dead-letter"
    topic_runs: str = "runs"  # compacted: the settings of each run (infogrowth/io/runs.py)
    app_id: str = "infogrowth"
    take_within: float = 1.0  # seconds an agent waits to fill a batch
    commit_interval_s: float = 0.5  # seconds between commits under load (caught up: at once)
    # One produce batch per partition at a time: a full batch waits for the broker's answer.
    producer_batch_bytes: int = 524_288  # below the broker's message.max.bytes (~1 MB)
    fetch_wait_s: float = 0.1  # longest broker-side wait of a fetch that finds nothing new
    worker_roles: str = "inference,captioner,curator"  # agents this worker runs
    accepted_partitions: int = 4  # `accepted` is keyed by id: consumers split its partitions
    raw_partitions: int = 1  # `raw-samples`: >1 lets several inference workers share it
    retention_ms: int = 0  # topics other than raw/scored: 0 = broker default, -1 = forever
    metrics_port: int = 9464  # the worker's Prometheus /metrics port; 0 = off
    log_every: int = 50  # batches between the worker's progress lines; 0 = never
    snapshot_every: int = 0  # curator batches between index snapshots in S3; 0 = never
    # The curator's gain and policy in a child process: the next batch is selected while
    # this one's outcomes are sent (two batches in flight). Same outcomes, more throughput
    # (docs/pipeline-throughput.md); off: on a thread of the worker, one batch at a time.
    curator_process: bool = True
    stall_restart_s: float = 120.0  # no batch this long with records waiting: restart; 0 = never
    gate_warn_s: float = 60.0  # a sample waiting this long for its new caption is logged; 0 = never
    shards: int = 1  # curator shards (1 = one exact curator); >1 needs `centroids`
    centroids: str = ""  # centroid file (path or s3://) routing samples to shards
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        defaults: Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> Settings:
        """Built-in defaults, then ``defaults`` (e.g. a command's own), then INFOGROWTH_<FIELD>
        variables, then explicit overrides (None means "not given")."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return cls.from_layers(
            Layer("command defaults", defaults or {}), env_layer(environ), Layer("code", given)
        )

    @classmethod
    def from_layers(cls, *layers: Layer) -> Settings:
        """The built-in defaults overridden by each layer in turn (later layers win)."""
        values: dict[str, Any] = {}
        for layer in layers:
            values.update(layer.typed())
        return cls(**values)

    def __post_init__(self) -> None:
        for name in CHECKS:
            problem = value_problem(name, getattr(self, name))
            if problem:
                raise SettingsError(None, name, problem)
        if self.s3_secret_key == LOCAL_S3_SECRET_KEY and not is_local(self.s3_endpoint):
            raise SettingsError(
                None,
                "s3_secret_key",
                f"the built-in default is for the local S3 gateway only, not for s3_endpoint "
                f"{self.s3_endpoint!r}: set {env_name('s3_secret_key')}, --s3-secret-key or "
                "s3_secret_key in the config file",
            )

    def __repr__(self) -> str:
        parts = (f"{f.name}={shown(f.name, getattr(self, f.name))}" for f in fields(self))
        return f"Settings({', '.join(parts)})"

    def secret_values(self) -> list[str]:
        return [getattr(self, name) for name in SECRET_FIELDS]

    def mask(self, text: str) -> str:
        """``text`` with the value of every secret field replaced by ***."""
        return mask_secrets(text, self.secret_values())


# Fields a layer may set, with their types ("extra" is filled by code only).
FIELD_TYPES: dict[str, type] = {
    name: kind for name, kind in get_type_hints(Settings).items() if name != "extra"
}
SECRET_FIELDS = frozenset(f.name for f in fields(Settings) if f.metadata.get("secret"))


class SettingsError(ValueError):
    """One bad setting, as one line: ``<source>: <field as the source spells it>: <problem>``."""

    def __init__(self, source: str | None, key: str | None, problem: str) -> None:
        super().__init__(": ".join(part for part in (source, key, problem) if part))
        self.source = source
        self.key = key


def shown(name: str, value: Any) -> str:
    """How a field's value may appear in text: *** for secrets."""
    return MASK if name in SECRET_FIELDS else repr(value)


def mask_secrets(text: str, secrets: Iterable[str]) -> str:
    for value in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(value, MASK)
    return text


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def is_local(endpoint: str) -> bool:
    """Whether a 'host:port' endpoint is on this machine."""
    try:
        host = urlsplit("//" + endpoint).hostname or ""
    except ValueError:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- value checks ------------------------------------------------------------------------
def _between(low: float, high: float) -> Callable[[Any], str | None]:
    return lambda v: None if low <= v <= high else f"must be in [{low}, {high}]"


def _at_least(low: int) -> Callable[[Any], str | None]:
    return lambda v: None if v >= low else f"must be >= {low}"


def _one_of(*choices: str) -> Callable[[Any], str | None]:
    return lambda v: None if v in choices else f"must be one of {'|'.join(choices)}"


def _roles(value: str) -> str | None:
    roles = [r.strip() for r in value.split(",") if r.strip()]
    if roles and set(roles) <= set(WORKER_ROLES):
        return None
    return f"must be a comma-separated subset of {','.join(WORKER_ROLES)}"


CHECKS: dict[str, Callable[[Any], str | None]] = {
    "delta": _between(0, 1),
    "dup_distance": _between(0, 2),
    "dup_hash_bits": lambda v: None if v in (0, 16, 36, 64) else "must be 0 (off), 16, 36 or 64",
    "dup_hash_distance": _between(0, 64),
    "dup_hash_near": _between(0, 64),
    "min_side": _at_least(0),
    "max_aspect": lambda v: None if v == 0 or v >= 1 else "must be 0 (off) or >= 1",
    "min_words": _at_least(0),
    "max_words": _at_least(0),
    "max_caption_repeats": _at_least(0),
    "alignment_top": lambda v: None if 0 < v <= 1 else "must be in (0, 1]",
    "label_confidence": _between(0, 1),
    "k": _at_least(1),
    "hnsw_m": _at_least(1),
    "hnsw_ef_construction": _at_least(1),
    "hnsw_ef": _at_least(1),
    "exact_limit": _at_least(0),
    "batch_size": _at_least(1),
    "accepted_partitions": _at_least(1),
    "raw_partitions": _at_least(1),
    "retention_ms": _at_least(-1),
    "metrics_port": _between(0, 65535),
    "log_every": _at_least(0),
    "snapshot_every": _at_least(0),
    "stall_restart_s": _at_least(0),
    "gate_warn_s": _at_least(0),
    "commit_interval_s": lambda v: None if v > 0 else "must be > 0",
    "producer_batch_bytes": _between(16_384, 1_000_000),
    "fetch_wait_s": _between(0.001, 30),
    "shards": _at_least(1),
    "gain_mean": _one_of("arithmetic", "geometric", "harmonic"),
    "policy": _one_of("threshold", "budget", "all"),
    "mode": _one_of("multimodal", "single"),
    "encoder": _one_of("auto", "packaged", "clip", "precomputed"),
    "captioner": _one_of("none", "label", "transformers", "openai"),
    "label_action": _one_of("relabel", "reject"),
    "worker_roles": _roles,
}


def value_problem(name: str, value: Any) -> str | None:
    """What is wrong with a field's (typed) value, as "<rule>, got <value>"; None if fine."""
    check = CHECKS.get(name)
    problem = check(value) if check else None
    return f"{problem}, got {shown(name, value)}" if problem else None


# --- typing values from a source ---------------------------------------------------------
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")
KIND_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _from_text(kind: type, raw: str) -> Any:
    """A string (environment, flag, quoted YAML) as a value of ``kind``; ValueError if not."""
    if kind is bool and raw.strip().lower() in TRUE_WORDS + FALSE_WORDS:
        return raw.strip().lower() in TRUE_WORDS
    if kind is str:
        return raw
    if kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    raise ValueError(f"must be {KIND_WORDS[kind]}")


def typed_value(kind: type, value: Any) -> Any:
    """``value`` as ``kind``: strings are parsed, other values must already have the type
    (an int is a float too, a bool is not a number)."""
    if isinstance(value, str):
        return _from_text(kind, value)
    if isinstance(value, bool) == (kind is bool) and isinstance(value, kind):
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    raise ValueError(f"must be {KIND_WORDS[kind]}")


# --- layers ------------------------------------------------------------------------------
def _same(name: str) -> str:
    return name


@dataclass(frozen=True)
class Layer:
    """Setting values from one source, keyed by field name."""

    source: str  # named in error messages: a file name, "environment", "command line"
    values: Mapping[Any, Any]
    spell: Callable[[str], str] = _same  # how the source writes a field's name

    def typed(self) -> dict[str, Any]:
        """The values converted to their field's type and checked; SettingsError if one is bad."""
        return {str(key): self._typed(str(key), value) for key, value in self.values.items()}

    def _typed(self, name: str, value: Any) -> Any:
        if name not in FIELD_TYPES:
            close = difflib.get_close_matches(name, FIELD_TYPES, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise SettingsError(self.source, name, f"unknown setting{hint}")
        try:
            typed = typed_value(FIELD_TYPES[name], value)
        except ValueError as exc:
            problem: str | None = f"{exc}, got {shown(name, value)}"
        else:
            problem = value_problem(name, typed)
        if problem:
            raise SettingsError(self.source, self.spell(name), problem)
        return typed


def env_layer(environ: Mapping[str, str] | None = None) -> Layer:
    """The INFOGROWTH_<FIELD> variables that are set (other INFOGROWTH_* names are ignored)."""
    env = os.environ if environ is None else environ
    values = {name: env[env_name(name)] for name in FIELD_TYPES if env_name(name) in env}
    return Layer("environment", values, env_name)


def file_layer(path: str) -> Layer:
    """The settings in a YAML file: a mapping of field names to values."""
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise SettingsError(path, None, f"cannot read ({reason})") from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as exc:  # its str() quotes the offending lines: keep the position
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise SettingsError(path, None, f"not valid YAML ({where}{problem})") from None
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise SettingsError(path, None, "must be a mapping of setting names to values")
    return Layer(path, values)
