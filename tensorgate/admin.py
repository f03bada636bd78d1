"""The admin commands: `keys`, `traffic` and `audit`, each one change or read of the registry."""

from __future__ import annotations

import argparse
import getpass
import json
import sqlite3
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.names import is_whole
from common.policy import ROLES, KeyRecord, TrafficPolicy
from common.registry import AuditEntry, Registry, RegistryError, default_registry_path

#: The top-level commands this module answers; cli.py hands them to `run`.
COMMANDS = ("keys", "traffic", "audit")


def registry_options() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--registry", type=Path, default=None, metavar="PATH",
                         help="the registry database (default: tensorgate.db beside the model "
                              "repository)")
    options.add_argument("--model-repository", type=Path, default=Path("models"),
                         help="the model repository, to find the default registry (./models)")
    return options


def _weight(text: str) -> tuple[str, int]:
    version, sep, weight = text.partition("=")
    if not sep or not version or not is_whole(weight.strip()):
        raise argparse.ArgumentTypeError(f"expected VERSION=WEIGHT with an integer weight, "
                                         f"like 1=90, got {text!r}")
    return version, int(weight)


def _shadow(text: str) -> tuple[str, float]:
    version, sep, percent = text.rpartition(":")
    expected = f"expected VERSION:PERCENT, like 3:5, got {text!r}"
    if not sep or not version:
        raise argparse.ArgumentTypeError(expected)
    try:
        return version, float(percent)
    except ValueError:
        raise argparse.ArgumentTypeError(expected) from None


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `keys`, `traffic` and `audit` to the `tensorgate` command's subparsers."""
    options = registry_options()
    keys = commands.add_parser("keys", help="create, list and revoke API keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", parents=[options],
                                     help="create a key and print its secret, once")
    create.add_argument("--name", required=True, help="a unique name: letters, digits, _ . -")
    create.add_argument("--role", required=True, choices=ROLES)
    create.add_argument("--models", action="append", metavar="GLOB",
                        help="models the key may use, as globs; repeat for several (all: *)")
    create.add_argument("--rate", type=float, default=0.0,
                        help="requests per second (0: no limit)")
    create.add_argument("--burst", type=int, default=0, help="bucket size (0: max(1, rate))")
    create.add_argument("--concurrency", type=int, default=0,
                        help="requests in flight at once (0: no limit)")
    listing = key_commands.add_parser("list", parents=[options], help="list the keys")
    listing.add_argument("--all", action="store_true", help="include revoked keys")
    revoke = key_commands.add_parser("revoke", parents=[options], help="revoke a key for good")
    revoke.add_argument("name")

    traffic = commands.add_parser("traffic", help="split a model's traffic between versions")
    traffic_commands = traffic.add_subparsers(dest="traffic_command", required=True)
    put = traffic_commands.add_parser("set", parents=[options],
                                      help="set the weights, stickiness and shadow of a model")
    put.add_argument("model")
    put.add_argument("weights", nargs="+", type=_weight, metavar="VERSION=WEIGHT")
    put.add_argument("--sticky", default="key",
                     help="what keeps a caller on one variant: key, sub or header:NAME (key)")
    put.add_argument("--shadow", type=_shadow, metavar="VERSION:PERCENT",
                     help="copy this percentage of requests to another version")
    show = traffic_commands.add_parser("show", parents=[options], help="show a model's policy")
    show.add_argument("model")
    clear = traffic_commands.add_parser("clear", parents=[options],
                                        help="remove a model's policy")
    clear.add_argument("model")

    audit = commands.add_parser("audit", parents=[options], help="show the registry's audit log")
    audit.add_argument("--model", help="only changes to this model and its versions")
    audit.add_argument("--limit", type=int, default=100, help="newest entries to show (100)")


def actor() -> str:
    """Who the audit log records for a CLI change: the OS user."""
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):
        return "cli:unknown"


def run(args: argparse.Namespace) -> int:
    """Run one admin command; a registry error prints `tensorgate: <message>` and returns 2."""
    path = args.registry or default_registry_path(args.model_repository)
    try:
        with Registry(path) as registry:
            if args.command == "keys":
                return _keys(registry, args)
            if args.command == "traffic":
                return _traffic(registry, args)
            return _audit(registry, args)
    except RegistryError as exc:
        print(f"tensorgate: {exc}", file=sys.stderr)
    except sqlite3.Error as exc:
        print(f"tensorgate: registry {path}: {exc}", file=sys.stderr)
    return 2


def _keys(registry: Registry, args: argparse.Namespace) -> int:
    if args.keys_command == "create":
        record, secret = registry.create_key(
            args.name, args.role, tuple(args.models or ("*",)), rate=args.rate,
            burst=args.burst, concurrency=args.concurrency, actor=actor())
        print(f"created {record.role} key {record.name!r} for models "
              f"{', '.join(record.models)} in {registry.path}", file=sys.stderr)
        print(f"key: {secret}")
        print("This secret will not be shown again: store it now.")
    elif args.keys_command == "list":
        records = registry.list_keys(include_revoked=args.all)
        if not records:
            print("no API keys; create one with `tensorgate keys create`", file=sys.stderr)
        else:
            print(table(_key_rows(records, args.all)))
    else:
        record = registry.revoke_key(args.name, actor=actor())
        print(f"revoked key {record.name!r}", file=sys.stderr)
    return 0


def _traffic(registry: Registry, args: argparse.Namespace) -> int:
    if args.traffic_command == "set":
        policy = registry.set_traffic(args.model, args.weights, sticky=args.sticky,
                                      shadow=args.shadow, actor=actor())
        print(f"set the traffic policy of model {args.model!r}", file=sys.stderr)
        print(_describe(policy))
    elif args.traffic_command == "show":
        found = registry.get_traffic(args.model)
        print(f"model {args.model!r} has no traffic policy" if found is None
              else _describe(found))
    else:
        registry.clear_traffic(args.model, actor=actor())
        print(f"cleared the traffic policy of model {args.model!r}", file=sys.stderr)
    return 0


def _audit(registry: Registry, args: argparse.Namespace) -> int:
    entries = registry.audit_log(model=args.model, limit=args.limit)
    if not entries:
        print("no audit entries" + (f" for model {args.model!r}" if args.model else ""),
              file=sys.stderr)
    for entry in entries:
        print(_audit_line(entry))
    return 0


def when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(at))


def _limit(value: float) -> str:
    # NOTE: 0 means "no limit" (or, for burst, "derived from the rate"), not "nothing allowed".
    return "-" if value == 0 else f"{value:g}"


def _key_rows(records: Sequence[KeyRecord], with_state: bool) -> list[list[str]]:
    header = ["NAME", "ROLE", "MODELS", "RATE", "BURST", "CONCURRENCY", "CREATED"]
    rows = [header + (["STATE"] if with_state else [])]
    for record in records:
        row = [record.name, record.role, ",".join(record.models), _limit(record.rate),
               _limit(record.burst), _limit(record.concurrency), when(record.created_at)]
        rows.append(row + ([("revoked" if record.revoked else "active")] if with_state else []))
    return rows


def table(rows: list[list[str]]) -> str:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
                     for row in rows)


def _describe(policy: TrafficPolicy) -> str:
    total = sum(weight for _, weight in policy.weights)
    split = "  ".join(f"{version}={weight} ({100 * weight / total:.4g}%)"
                      for version, weight in policy.weights)
    shadow = ("none" if policy.shadow_version is None
              else f"{policy.shadow_percent:g}% of requests copied to version "
                   f"{policy.shadow_version}")
    return (f"model:  {policy.model}\nsplit:  {split}\nsticky: {policy.sticky}\n"
            f"shadow: {shadow}")


def _compact(value: Any) -> str:
    return "-" if value is None else json.dumps(value, sort_keys=True, separators=(",", ":"))


def _audit_line(entry: AuditEntry) -> str:
    return (f"{when(entry.at)}  {entry.actor}  {entry.action}  {entry.target}  "
            f"{_compact(entry.before)} -> {_compact(entry.after)}")
