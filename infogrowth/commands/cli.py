"""`infogrowth` command line: curate files offline, run the local stack, stream, replay."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from infogrowth.commands.demo import DEMO_DEFAULTS
from infogrowth.settings import (
    CONFIG_ENV,
    FIELD_TYPES,
    SECRET_FIELDS,
    Layer,
    Settings,
    env_layer,
    env_name,
    file_layer,
    mask_secrets,
    shown,
)

if TYPE_CHECKING:
    from infogrowth.commands.offline import Summary

# Help for the settings a user most often sets; every Settings field is a flag either way.
SETTING_HELP = {
    "delta": "alignment threshold δ: below it a caption is regenerated, then rejected",
    "k": "nearest neighbours averaged for the gain",
    "policy": "online selection: threshold (gain ≥ tau), budget (best --budget gains), all",
    "tau": "gain threshold of the threshold policy",
    "budget": "number of samples kept by the budget policy",
    "exact_limit": "kept samples whose gains are exact (an exact scan, no HNSW graph); the "
    "first batch past it builds the HNSW graphs (~15 s per 10^5 on 2 cores)",
    "dup_distance": "image cosine distance to a kept image at or below which a sample is a "
    "duplicate, whatever its caption (0: exact copies only); with image hashes, only if the "
    "hashes are also within --dup-hash-near",
    "dup_hash_bits": "perceptual image hash (DCT; tolerates flips and small corner crops) of "
    "16, 36 or 64 bits, computed where the image is decoded (0: embedding distance alone)",
    "dup_hash_distance": "hash bits from a kept image at or below which a sample is a "
    "duplicate, whatever the embeddings say",
    "dup_hash_near": "hash bits at or below which an image within --dup-distance is a duplicate",
    "min_side": "images with a side below this many pixels are rejected (image_shape; 0: off)",
    "max_aspect": "images with long/short side above this are rejected (image_shape; 0: off)",
    "min_words": "captions with fewer words are rejected (caption_length; 0: off)",
    "max_words": "captions with more words are rejected (caption_length; 0: off)",
    "max_caption_repeats": "a caption seen more often is rejected (caption_repeated; 0: off)",
    "alignment_top": "keep the top fraction by alignment, online (low_alignment; 1: off)",
    "encoder": "auto (packaged, loaded only for rows without both embeddings), packaged "
    "(offline stand-in: EfficientNet-Lite0 + MiniLM), clip, precomputed",
    "clip_model": "CLIP/SigLIP checkpoint: local directory or hub id (needs --encoder clip)",
    "captioner": "none (misaligned samples are rejected), transformers, openai, label "
    "(opt-in 'a photo of a <top label>', not re-scored, marked label_fallback)",
    "captioner_model": "captioning model: local directory (transformers) or model name (openai)",
    "captioner_url": "OpenAI-compatible endpoint of a served VLM, e.g. http://127.0.0.1:8000/v1",
    "seed": "seed of every random choice (per-sample randomness is derived from sample ids)",
    "mode": "multimodal (image + caption) or single (image + label, label cleaning)",
    "label_confidence": "single mode: a label whose vote share/probability is below this and "
    "that another label beats is doubtful",
    "label_action": "single mode, doubtful label: relabel (to the winning label) or reject "
    "(reason mislabelled)",
    "label_model": "single mode: local transformers image classifier whose classes are your "
    "labels (default: vote of the k nearest earlier samples' labels)",
    "gain_mean": "how the k neighbour distances are averaged: arithmetic, geometric, harmonic",
    "device": "auto (CUDA when present), cpu or cuda",
    "shards": "curator shards (1: one exact curator); more needs --centroids with as many",
    "centroids": "centroid file (path or s3://) from `infogrowth shards fit`: each sample is "
    "curated in the shard of its nearest centroid",
    "curator_process": "the curator's gain index and policy in a child process of the worker, "
    "so the next batch is selected while this one's outcomes are sent (same outcomes; "
    "~+20%% end to end on 2 cores, docs/pipeline-throughput.md); --no-curator-process: on a "
    "thread of the worker, one batch at a time",
    "schema_registry_url": "Confluent Schema Registry: register the schemas there and write "
    "its ids into records (default: the fixed ids of schemas/registry.json)",
}


SETTINGS_GROUP = (
    "each setting also comes from a YAML file (--config, or INFOGROWTH_CONFIG) and from an "
    "INFOGROWTH_<NAME> variable; precedence: built-in default < the command's default < "
    "config file < environment < flag. Defaults shown leave out the config file; secrets "
    "show as ***."
)


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_settings_flags(
    parser: argparse.ArgumentParser,
    only: Sequence[str] | None = None,
    command_defaults: dict[str, Any] | None = None,
) -> None:
    """--config plus one flag per Settings field; --help shows each field's default."""
    parser.set_defaults(command_defaults=command_defaults or {})
    group = parser.add_argument_group("settings", SETTINGS_GROUP)
    group.add_argument(
        "--config",
        metavar="FILE.yaml",
        help=f"YAML file of settings, e.g. a recipe kept in git (env {CONFIG_ENV})",
    )
    defaults = help_defaults(command_defaults)
    for name, kind in FIELD_TYPES.items():
        if only is not None and name not in only:
            continue
        text = SETTING_HELP.get(name, name.replace("_", " "))
        default = shown(name, defaults[name]).replace("%", "%%")  # help is %-formatted
        help_text = f"{text} (default: {default}; env {env_name(name)})"
        if kind is bool:
            action: Any = argparse.BooleanOptionalAction
            group.add_argument(flag_name(name), dest=name, action=action, help=help_text)
        else:  # parsed with the other layers, so a bad value is reported the same way
            group.add_argument(
                flag_name(name), dest=name, metavar=kind.__name__.upper(), help=help_text
            )


def help_defaults(command_defaults: dict[str, Any] | None) -> dict[str, Any]:
    """Each field's value before the config file and flags: what --help shows."""
    try:
        settings = Settings.from_env(defaults=command_defaults)
    except ValueError:  # a bad variable is reported when the command runs, not in --help
        settings = Settings.from_layers(Layer("command defaults", command_defaults or {}))
    return {name: getattr(settings, name) for name in FIELD_TYPES}


def settings_from_args(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None, base: Layer | None = None
) -> Settings:
    """``base`` (e.g. a recorded run's settings) sits above the command's defaults, below the
    config file, the environment and the flags."""
    env = os.environ if environ is None else environ
    layers = [Layer("command defaults", getattr(args, "command_defaults", {}))]
    layers += [base] if base is not None else []
    config = getattr(args, "config", None) or env.get(CONFIG_ENV)
    if config:
        layers.append(file_layer(config))
    given = {k: v for k, v in vars(args).items() if k in FIELD_TYPES and v is not None}
    layers += [env_layer(env), Layer("command line", given, flag_name)]
    return Settings.from_layers(*layers)


def given_secrets(args: argparse.Namespace, environ: Mapping[str, str]) -> list[str]:
    """Secret values from the variables and flags, known even when the settings are invalid."""
    found = [environ.get(env_name(name)) for name in SECRET_FIELDS]
    found += [getattr(args, name, None) for name in SECRET_FIELDS]
    return [value for value in found if value]


CURATE_FLAGS = (
    "delta", "k", "policy", "tau", "budget", "encoder", "clip_model", "captioner",
    "captioner_model", "captioner_url", "seed", "mode", "gain_mean", "hnsw_m",
    "hnsw_ef_construction", "hnsw_ef", "exact_limit", "batch_size", "device", "label_confidence",
    "label_action", "label_model",
    "s3_endpoint", "s3_access_key", "s3_secret_key", "s3_bucket",
    "dup_distance", "min_side", "max_aspect", "min_words", "max_words", "max_caption_repeats",
    "alignment_top", "dup_hash_bits", "dup_hash_distance", "dup_hash_near",
    "shards", "centroids",
)  # fmt: skip


IO_FLAGS = (
    "kafka_bootstrap", "s3_endpoint", "s3_access_key", "s3_secret_key", "s3_bucket", "s3_secure",
    "schema_registry_url",
)  # fmt: skip


TOPIC_FLAGS = tuple(name for name in FIELD_TYPES if name.startswith("topic_"))


class Parser(argparse.ArgumentParser):
    """argparse, but an error about unrecognized arguments names only the flags: a
    misspelt secret flag (``--s3-secret-ky=…``) must not print the secret."""

    def error(self, message: str) -> NoReturn:
        head, sep, rest = message.partition("unrecognized arguments: ")
        if sep:
            shown = [a.split("=", 1)[0] + ("=…" if "=" in a else "") for a in rest.split()]
            shown = [a if a.startswith("-") else "…" for a in shown]
            message = f"{head}{sep}{' '.join(shown)} (values not shown)"
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="infogrowth",
        description="Online data curation for image-text datasets (InfoGrowth): clean "
        "misaligned captions, measure each sample's information gain against what was "
        "already collected, and keep the samples that add something.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    curate = sub.add_parser(
        "curate",
        help="curate a JSONL/Parquet file offline (no Kafka)",
        description="Curate INPUT into OUT (JSONL or Parquet, by extension). Every input row "
        "comes out once, in order, with decision, gain, alignment, reason and the final "
        "caption added. Input fields: id (required), image (path, file:// or s3://), "
        "caption, label, image_embedding + text_embedding (when both are given no model runs).",
    )
    curate.add_argument("input", help="input .jsonl or .parquet")
    curate.add_argument("--out", required=True, help="output .jsonl or .parquet")
    curate.add_argument("--quiet", action="store_true", help="no progress bar")
    add_settings_flags(curate, CURATE_FLAGS)
    curate.set_defaults(func=cmd_curate)

    ingest = sub.add_parser(
        "ingest",
        help="upload a file's images to S3 and produce its rows to Kafka",
        description="Produce one RawSample per row of INPUT (JSONL or Parquet) keyed by id. "
        "Local images (relative paths: from INPUT's directory) are uploaded to S3 under "
        "PREFIX + a content hash, so re-ingesting uploads nothing new; s3:// references are "
        "kept. Rows with a missing image are still produced (the pipeline rejects them).",
    )
    ingest.add_argument("input", help="input .jsonl or .parquet")
    ingest.add_argument("--topic", help="destination topic (default: --topic-raw)")
    ingest.add_argument("--prefix", default="images/", help="S3 key prefix (default: images/)")
    ingest.add_argument("--quiet", action="store_true", help="no progress bar")
    add_settings_flags(ingest, IO_FLAGS + ("topic_raw",))
    ingest.set_defaults(func=cmd_ingest)

    export = sub.add_parser(
        "export",
        help="write the accepted samples as a sharded dataset (Parquet or WebDataset)",
        description="Read the accepted topic from start to its current end (committed records "
        "only), keep one record per id, leave out samples the budget policy evicted later, "
        "and write shards plus manifest.json to DEST: "
        "s3://BUCKET/datasets/NAME or a local directory.",
    )
    export.add_argument("--dest", required=True, help="s3://BUCKET/datasets/NAME or a directory")
    export.add_argument("--format", choices=("parquet", "webdataset"), default="parquet")
    export.add_argument("--topic", help="source topic (default: --topic-accepted)")
    export.add_argument(
        "--rejected-topic",
        help="where over_budget evictions are read from, to leave those samples out "
        "(default: --topic-rejected when --topic is not given)",
    )
    export.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    export.add_argument("--quiet", action="store_true", help="no progress bar")
    add_settings_flags(
        export, IO_FLAGS + ("topic_accepted", "topic_rejected", "topic_runs", "app_id")
    )
    export.set_defaults(func=cmd_export)

    worker = sub.add_parser(
        "worker",
        help="run the streaming agents (Faust worker) on Kafka",
        description="Run the Faust worker: inference (encode + align), captioner (new captions "
        "for misaligned samples) and curator (gain index, policy, accepted/rejected). Choose "
        "a subset with --worker-roles to scale stages apart. Creates the topics if missing.",
    )
    worker.add_argument("--loglevel", default="info", choices=tuple(WORKER_LOG_LEVELS))
    add_settings_flags(worker)
    worker.set_defaults(func=cmd_worker)

    replay = sub.add_parser(
        "replay",
        help="rebuild the dataset from scored (or raw-samples), optionally with other settings",
        description="Read `scored` (the embeddings, in the curator's order) from offset 0 and "
        "curate it again into <accepted>-VERSION / <rejected>-VERSION without running a model. "
        "With unchanged settings the accepted records equal the streaming run's byte for "
        "byte; change --delta, --k, --policy, --tau ... to see the dataset they would have "
        "built. --from raw encodes `raw-samples` again with the current encoder instead. "
        "The settings default to those the worker of --app-id last recorded in the runs "
        "topic (a config file, INFOGROWTH_* variables and flags override them). A VERSION "
        "whose topics exist is refused unless --resume. Prints the export command for the "
        "result.",
    )
    replay.add_argument("--version", required=True, help="suffix of the output topics, e.g. v2")
    replay.add_argument(
        "--from",
        dest="source",
        choices=("scored", "raw"),
        default="scored",
        help="scored: re-curate the stored embeddings (default); raw: re-encode raw-samples",
    )
    replay.add_argument(
        "--resume",
        action="store_true",
        help="finish an interrupted replay of VERSION: curate again, send only the outcomes its "
        "topics lack (with the settings that VERSION was built with)",
    )
    replay.add_argument("--quiet", action="store_true", help="no progress bar")
    add_settings_flags(
        replay,
        CURATE_FLAGS
        + IO_FLAGS
        + ("topic_raw", "topic_scored", "topic_accepted", "topic_rejected", "topic_runs", "app_id"),
    )
    replay.set_defaults(func=cmd_replay)

    report = sub.add_parser(
        "report",
        help="write one self-contained HTML page of what a run decided, with thumbnails",
        description="Write OUT: one HTML page (inline CSS, SVG histograms, base64 thumbnails; "
        "no external URLs) with counts by decision and reason, gain and alignment histograms "
        "with tau and delta marked, and galleries: each redundant sample beside the earlier "
        "sample that made it so, misaligned, recaptioned, relabelled, bad input and accepted "
        "samples. Source: a curate output file (INPUT) or, without INPUT, the run's accepted "
        "and rejected topics (committed records, budget evictions honoured). Images are read "
        "by reference with the S3 settings; an unreadable one is a placeholder box.",
    )
    report.add_argument("input", nargs="?", help="curate output .jsonl or .parquet")
    report.add_argument("--out", default="report.html", help="output page (default: report.html)")
    report.add_argument(
        "--max-per-section", type=int, default=48, help="thumbnails per gallery (default: 48)"
    )
    add_settings_flags(
        report,
        IO_FLAGS + ("topic_accepted", "topic_rejected", "delta", "tau", "k", "policy", "budget",
                    "encoder", "mode"),
    )  # fmt: skip
    report.set_defaults(func=cmd_report)

    demo = sub.add_parser(
        "demo",
        help="start the local broker + S3, stream the bundled demo set through the pipeline",
        description="Start the local Kafka broker and S3 gateway (if not running), build the "
        "demo set (photos shipped in scikit-image/scikit-learn, captions written for them, "
        "near-duplicates, wrong captions, broken files), ingest it, run a worker until every "
        "sample has an outcome, print what was accepted, recaptioned and rejected and why, "
        "and export the curated dataset to S3. `make down` stops the broker and S3.",
    )
    demo.add_argument("--timeout", type=float, default=900, help="seconds to wait for the worker")
    add_settings_flags(demo, CURATE_FLAGS + IO_FLAGS, DEMO_DEFAULTS)  # see commands/demo.py
    demo.set_defaults(func=cmd_demo)
    add_tail_parser(sub)
    add_status_parser(sub)
    add_shards_parser(sub)
    return parser


def add_status_parser(sub: Any) -> None:
    status = sub.add_parser(
        "status",
        help="consumer lag, output rates and index size of a running pipeline",
        description="One screen on a running pipeline: the consumer group's lag per topic and "
        "partition (committed offsets against last stable offsets), the output topics' "
        "offsets and rates over --interval seconds, and, when the worker's metrics endpoint "
        "answers, the index size and outcomes by decision and reason.",
    )
    status.add_argument(
        "--metrics-url", help="the worker's metrics (default: 127.0.0.1:--metrics-port)"
    )
    status.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    add_settings_flags(status, ("kafka_bootstrap", "app_id", "metrics_port", *TOPIC_FLAGS))
    status.set_defaults(func=cmd_status)


def add_shards_parser(sub: Any) -> None:
    shards = sub.add_parser(
        "shards",
        help="fit the centroids that split the curator into shards",
        description="A sharded curator routes each sample to the shard of its nearest "
        "centroid; each shard curates its samples against its own index.",
    )
    action = shards.add_subparsers(dest="action", required=True, metavar="ACTION")
    fit = action.add_parser(
        "fit",
        help="fit --shards centroids (k-means, --seed) on a bootstrap sample",
        description="Fit --shards k-means centroids (seed --seed) on the L2-normalised image "
        "embeddings of the first --n samples of FROM, write centroids-<version>.bin (version: "
        "a hash of its content) under --dest, and print the reference to pass as --centroids.",
    )
    fit.add_argument(
        "--from",
        dest="source",
        required=True,
        help="a .jsonl/.parquet file (encoded unless it carries embeddings), or the topic "
        "`scored` (embeddings as stored) or `raw` (encoded)",
    )
    fit.add_argument("--n", type=int, default=10000, help="samples to fit on (default: 10000)")
    fit.add_argument(
        "--dest", help="directory or s3://bucket/prefix (default: s3://<s3-bucket>/centroids)"
    )
    models = ("encoder", "clip_model", "mode", "device", "batch_size")
    topics = ("topic_raw", "topic_scored")
    add_settings_flags(fit, ("shards", "seed", *models, *IO_FLAGS, *topics))
    fit.set_defaults(func=cmd_shards_fit)


def add_tail_parser(sub: Any) -> None:
    tail = sub.add_parser(
        "tail",
        help="print the accepted samples as JSON lines (committed records only)",
        description="Print each committed accepted record as one JSON object per line "
        "(stdout), with its partition and offset. Samples the budget policy evicted are left "
        "out. Without --follow: every record up to the current end, then exit; with it: new "
        "records as they come (all of them first with --from-beginning). Embeddings are shown "
        "as their size unless --embeddings.",
    )
    tail.add_argument("--follow", "-f", action="store_true", help="wait for new records")
    tail.add_argument(
        "--from-beginning",
        action="store_true",
        help="with --follow, start at offset 0 (without --follow it always does)",
    )
    tail.add_argument("--embeddings", action="store_true", help="print the embedding vectors")
    tail.add_argument("--max", type=int, metavar="N", help="stop after N records")
    tail.add_argument("--topic", help="topic to read (default: --topic-accepted)")
    add_settings_flags(tail, IO_FLAGS + ("topic_accepted", "topic_rejected"))
    tail.set_defaults(func=cmd_tail)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    secrets = given_secrets(args, os.environ)
    try:
        settings = settings_from_args(args)
        secrets += settings.secret_values()
        if settings.schema_registry_url:
            from infogrowth.io.schema_registry import use_registry

            use_registry(settings.schema_registry_url)
        return int(args.func(args, settings) or 0)
    except KeyboardInterrupt:
        print(f"infogrowth {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        return report_error(args.command, exc, secrets)


def one_line_errors() -> tuple[type[BaseException], ...]:
    """Failures of input, settings or infrastructure: a one-line message, no traceback."""
    from minio.error import MinioException
    from urllib3.exceptions import HTTPError

    return (ValueError, OSError, RuntimeError, MinioException, HTTPError)


def report_error(command: str, exc: Exception, secrets: list[str]) -> int:
    """Print the error (secrets masked); exit status 2 for a one-line error, else 1."""
    if isinstance(exc, one_line_errors()):
        line = " ".join(str(exc).split()) or type(exc).__name__
        print(mask_secrets(f"infogrowth {command}: error: {line}", secrets), file=sys.stderr)
        return 2
    text = "".join(traceback.format_exception(exc))
    print(mask_secrets(text, secrets), end="", file=sys.stderr)
    return 1


def cmd_curate(args: argparse.Namespace, settings: Settings) -> int:
    from infogrowth.commands.offline import curate_file

    started = time.monotonic()
    summary = curate_file(Path(args.input), Path(args.out), settings, progress=not args.quiet)
    print_summary(summary, time.monotonic() - started, out=sys.stderr)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def cmd_shards_fit(args: argparse.Namespace, settings: Settings) -> int:
    from infogrowth.commands.shards import fit_centroids, save

    centroids = fit_centroids(args.source, args.n, settings)
    ref = save(centroids, args.dest or f"s3://{settings.s3_bucket}/centroids", settings)
    print(f"{centroids.shards} centroids fitted on {centroids.fitted_on} samples", file=sys.stderr)
    print(f"--centroids {ref}")
    return 0


def cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    from infogrowth.commands.ingest import ingest_file

    summary = ingest_file(
        args.input, settings, topic=args.topic, prefix=args.prefix, progress=not args.quiet
    )
    for problem in summary.problems:
        print(f"  {problem}", file=sys.stderr)
    print(summary.line(), file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    from infogrowth.commands.export import export_dataset

    summary = export_dataset(
        args.dest,
        settings,
        fmt=args.format,
        topic=args.topic,
        rejected_topic=args.rejected_topic,
        shard_size=args.shard_size,
        progress=not args.quiet,
    )
    for problem in summary.problems:
        print(f"  {problem}", file=sys.stderr)
    print(summary.line(), file=sys.stderr)
    return 0


# --loglevel's names (Faust's) and their levels.
WORKER_LOG_LEVELS = {
    "crit": logging.CRITICAL,
    "error": logging.ERROR,
    "warn": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
}


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    import os

    from infogrowth.commands.pipeline import ensure_pipeline_topics, settings_env
    from infogrowth.io.kafka_io import check_broker

    check_broker(settings.kafka_bootstrap)
    ensure_pipeline_topics(settings)
    os.environ.update(settings_env(settings))  # agents.app reads its Settings from the env
    # Faust sets the level up when the worker starts; the curator's selection process
    # starts before (with the app) and logs at the level it finds then.
    logging.getLogger().setLevel(WORKER_LOG_LEVELS[args.loglevel])
    from agents.app import app, context
    from infogrowth.io.runs import record_run

    record_run(context.settings, "worker", encoder=context.curator.encoder)  # after model checks
    sys.argv = ["infogrowth-worker", "worker", "--loglevel", args.loglevel, "--without-web"]
    app.main()
    return 0


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from infogrowth.commands.replay import refuse_existing, replay
    from infogrowth.io.kafka_io import check_broker

    check_broker(settings.kafka_bootstrap)
    refuse_existing(settings, args.version, args.resume)  # before anything is printed
    settings = replay_settings(args, settings)
    started = time.monotonic()
    result = replay(
        settings, args.version, progress=not args.quiet, source=args.source, resume=args.resume
    )
    print_summary(result.summary, time.monotonic() - started, out=sys.stderr)
    if result.malformed or result.duplicates:
        print(
            f"  skipped: {result.malformed} malformed, {len(result.duplicates)} repeated ids",
            file=sys.stderr,
        )
    if result.pending:
        print(f"  {len(result.pending)} samples still wait for their recaption", file=sys.stderr)
    if result.already_sent:
        print(f"  resumed: {result.already_sent} outcomes were there already", file=sys.stderr)
    print(
        f"wrote {result.accepted_topic} and {result.rejected_topic} (run {result.run})",
        file=sys.stderr,
    )
    print("export it with:", file=sys.stderr)
    print("  " + export_command(settings, args.version), file=sys.stderr)
    return 0


def replay_settings(args: argparse.Namespace, settings: Settings) -> Settings:
    """The settings of the run being replayed (with --resume: of VERSION's run), overridden
    by the config file, the environment and the flags."""
    from infogrowth.commands.replay import version_run
    from infogrowth.io.runs import (
        latest_worker_run,
        read_runs,
        recorded_settings,
        run_layer,
        run_values,
    )

    runs = read_runs(settings)
    ref = version_run(settings, args.version) if args.resume else None
    record = runs.get(ref) if ref else latest_worker_run(runs, settings.app_id)
    if record is None:
        print(
            f"note: no run of {settings.app_id} recorded in {settings.topic_runs}: "
            "replaying with the settings given",
            file=sys.stderr,
        )
        return settings
    rebuilt = settings_from_args(args, base=run_layer(record))
    recorded = recorded_settings(record)
    changed = [f"{k}={v!r}" for k, v in run_values(rebuilt).items() if recorded.get(k) != v]
    note = f", changed: {', '.join(changed)}" if changed else ""
    print(f"settings of run {record['run']}{note}", file=sys.stderr)
    return rebuilt


def export_command(settings: Settings, version: str) -> str:
    """The `infogrowth export` command line for a replay's output topics."""
    from infogrowth.commands.replay import output_topics

    accepted, rejected = output_topics(settings, version)
    argv = ["infogrowth", "export", "--topic", accepted, "--rejected-topic", rejected]
    argv += ["--dest", f"s3://{settings.s3_bucket}/datasets/{settings.app_id}-{version}"]
    builtin = Settings()
    for name in ("kafka_bootstrap", "s3_endpoint", "topic_runs"):
        if getattr(settings, name) != getattr(builtin, name):
            argv += [flag_name(name), str(getattr(settings, name))]
    return shlex.join(argv)


def cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    from infogrowth.report import report_from_file, report_from_topics

    if args.max_per_section < 1:
        raise ValueError(f"--max-per-section must be at least 1, got {args.max_per_section}")
    if args.input:
        summary = report_from_file(args.input, args.out, settings, args.max_per_section)
    else:
        from infogrowth.io.kafka_io import check_broker

        check_broker(settings.kafka_bootstrap)
        summary = report_from_topics(settings, args.out, args.max_per_section)
    print(summary.line(), file=sys.stderr)
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from infogrowth.commands.demo import run_demo

    return run_demo(settings, timeout_s=args.timeout)


def cmd_tail(args: argparse.Namespace, settings: Settings) -> int:
    import itertools
    import json

    from infogrowth.io.consume import CuratedStream

    stream = CuratedStream(
        settings,
        topic=args.topic,
        follow=args.follow,
        from_beginning=args.from_beginning or not args.follow,
    )
    with stream:
        try:
            for sample in itertools.islice(stream, args.max):
                line = json.dumps(sample.as_json(args.embeddings), ensure_ascii=False)
                print(line, flush=args.follow)
        except BrokenPipeError:  # `infogrowth tail | head`: the reader has seen enough
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from infogrowth.commands.status import pipeline_status, render

    print(render(pipeline_status(settings, args.metrics_url, args.interval)))
    return 0


def print_summary(summary: Summary, seconds: float, out: Any = sys.stdout) -> None:
    total = sum(summary.counts.values())
    rate = total / seconds if seconds > 0 else float("inf")
    print(f"{total} samples in {seconds:.1f}s ({rate:.1f}/s)", file=out)
    for key, n in sorted(summary.counts.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  {key:<24} {n:>8}  {100 * n / max(total, 1):5.1f}%", file=out)
    if summary.recaptioned:
        parts = ", ".join(f"{n} {d}" for d, n in sorted(summary.recaptioned.items()))
        print(f"  recaptioned: {parts}", file=out)
    if summary.gains:
        print("  gain quantiles: " + format_quantiles(summary.gains), file=out)
    for note in summary.notes:
        print(f"  note: {note}", file=out)


def format_quantiles(values: list[float]) -> str:
    import numpy as np

    qs = (5, 25, 50, 75, 95)
    vals = np.percentile(np.asarray(values, dtype=np.float64), qs)
    return "  ".join(f"p{q}={v:.4f}" for q, v in zip(qs, vals, strict=True))


if __name__ == "__main__":
    raise SystemExit(main())
