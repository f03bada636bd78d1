"""`tensorgate models ...`: register, list, describe, unregister, promote and roll back versions."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common.model_config import ConfigError
from common.registry import Registry, RegistryError, default_registry_path
from common.registry.versions import PRODUCTION, Lifecycle, VersionRecord
from tensorgate import lifecycle
from tensorgate.admin import actor, registry_options, table, when

COMMANDS = ("models",)


def _target(text: str) -> tuple[str, str]:
    model, sep, version = text.partition(":")
    if not model or not sep or not version:
        raise argparse.ArgumentTypeError(f"expected NAME:VERSION, like digits:2, got {text!r}")
    return model, version


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    options = registry_options()
    models = commands.add_parser("models", help="register, promote and roll back model versions")
    sub = models.add_subparsers(dest="models_command", required=True)
    register = sub.add_parser("register", parents=[options],
                              help="copy a model file in, validate it, and make it servable")
    register.add_argument("name")
    register.add_argument("--file", type=Path, required=True, help="a .onnx or .pt file")
    register.add_argument("--version", help="the version number (next free one)")
    register.add_argument("--config", type=Path, help="config.yaml / config.pbtxt (new models)")
    register.add_argument("--notes", default="", help="free text kept with the version")
    sub.add_parser("list", parents=[options], help="every version, its state and aliases")
    describe = sub.add_parser("describe", parents=[options], help="one model or version, as JSON")
    describe.add_argument("target", metavar="NAME[:VERSION]")
    unregister = sub.add_parser("unregister", parents=[options], help="retire a version")
    unregister.add_argument("target", type=_target, metavar="NAME:VERSION")
    unregister.add_argument("--force", action="store_true",
                            help="even while an alias or the traffic policy points at it")
    promote = sub.add_parser("promote", parents=[options], help="point an alias at a version")
    promote.add_argument("target", type=_target, metavar="NAME:VERSION")
    promote.add_argument("--to", default=PRODUCTION, help="the alias (production)")
    rollback = sub.add_parser("rollback", parents=[options],
                              help="point an alias back at the version it had before")
    rollback.add_argument("name")
    rollback.add_argument("--alias", default=PRODUCTION, help="the alias (production)")


def run(args: argparse.Namespace) -> int:
    path = args.registry or default_registry_path(args.model_repository)
    try:
        with Registry(path) as registry:
            if args.model_repository.is_dir():
                lifecycle.sync_repository(registry, args.model_repository, actor())
            return _dispatch(registry, args)
    except (RegistryError, ConfigError) as exc:
        print(f"tensorgate: {exc}", file=sys.stderr)
    return 2


def _dispatch(registry: Registry, args: argparse.Namespace) -> int:
    lifecycle_ = Lifecycle(registry)
    command = args.models_command
    if command == "register":
        return _register(registry, args)
    if command == "list":
        print(table(_rows(lifecycle_, lifecycle_.versions())))
    elif command == "describe":
        print(_describe(registry, lifecycle_, args.target))
    elif command == "unregister":
        model, version = args.target
        lifecycle.retire(registry, args.model_repository, model, version, actor(), args.force)
        print(f"retired {model}:{version}; its files are in "
              f"{args.model_repository / model / '.retired' / version}", file=sys.stderr)
    elif command == "promote":
        model, version = args.target
        before = lifecycle_.promote(model, version, actor(), args.to)
        print(f"{model}: {args.to} {before or '-'} -> {version}", file=sys.stderr)
    else:
        current, target = lifecycle_.rollback(args.name, actor(), args.alias)
        print(f"{args.name}: {args.alias} {current} -> {target}", file=sys.stderr)
    return 0


def _register(registry: Registry, args: argparse.Namespace) -> int:
    if not args.file.is_file():
        raise RegistryError(f"{args.file}: no such file")
    ask = lifecycle.Request(args.name, args.file, args.version, args.config, args.notes)
    record = lifecycle.register(registry, args.model_repository, ask, actor(),
                                progress=sys.stderr.isatty())
    if record.state != "ready":
        print(f"tensorgate: {record.label} failed validation and serves nothing: "
              f"{record.reason}", file=sys.stderr)
        return 1
    print(f"registered {record.label} ({record.backend}, {record.size} bytes, sha256 "
          f"{record.sha256[:12]}…): validated and ready; promote it with "
          f"`tensorgate models promote {record.label}`", file=sys.stderr)
    return 0


def _rows(lifecycle_: Lifecycle, records: list[VersionRecord]) -> list[list[str]]:
    rows = [["MODEL", "VERSION", "STATE", "ALIASES", "BACKEND", "SIZE", "CREATED", "BY"]]
    aliases: dict[str, dict[str, str]] = {}
    for r in records:
        named = aliases.setdefault(r.model, lifecycle_.aliases(r.model))
        here = ",".join(a for a, v in named.items() if v == r.version) or "-"
        rows.append([r.model, r.version, r.state if not r.reason else f"{r.state} ({r.reason})",
                     here, r.backend, str(r.size), when(r.created_at), r.created_by])
    return rows


def _describe(registry: Registry, lifecycle_: Lifecycle, target: str) -> str:
    """As JSON: signature, state, sha256, traffic share and aliases, and the recent history."""
    model, _, version = target.partition(":")
    records = [r for r in lifecycle_.versions(model) if not version or r.version == version]
    if not records:
        raise RegistryError(f"no registered version matches {target!r}")
    policy = registry.get_traffic(model)
    total = sum(w for _, w in policy.weights) if policy else 0
    share = {v: 100.0 * w / total for v, w in policy.weights} if policy else {}
    history = registry.audit_log(model=model, limit=20)
    described = {
        "model": model, "aliases": lifecycle_.aliases(model),
        "versions": [{**r.summary(), "signature": r.signature,
                      "traffic_percent": share.get(r.version, 0.0)} for r in records],
        "history": [{"at": when(e.at), "actor": e.actor, "action": e.action,
                     "target": e.target, "before": e.before, "after": e.after}
                    for e in history if not version or e.target in (model, target)
                    or e.target.startswith(f"{model}:")],
    }
    return json.dumps(described, indent=2, sort_keys=True, default=str)
