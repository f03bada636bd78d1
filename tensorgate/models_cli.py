"""`tensorgate models ...`: register, list, describe, unregister, promote and roll back versions."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.model_config import ConfigError
from common.names import is_name, is_version, rule, shown
from common.registry import Registry, RegistryError, default_registry_path
from common.registry.versions import PRODUCTION, Lifecycle
from tensorgate import lifecycle
from tensorgate import models_view as view
from tensorgate.admin import actor, registry_options

COMMANDS = ("models",)


def _target(text: str) -> tuple[str, str]:
    model, sep, version = text.partition(":")
    if not is_name(model) or not sep or not is_version(version):
        raise argparse.ArgumentTypeError(f"expected NAME:VERSION, like digits:2 (a name of "
                                         f"{rule()}; a whole number), got {shown(text)}")
    return model, version


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    options = registry_options()
    models = commands.add_parser("models", help="register, promote and roll back model versions")
    sub = models.add_subparsers(dest="models_command", required=True)
    register = sub.add_parser("register", parents=[options],
                              help="copy a model file in, validate it, and make it servable")
    register.add_argument("name")
    register.add_argument("--file", type=Path, required=True, help="a .onnx, .pt or .pt2 file")
    register.add_argument("--version", help="the version number (next free one)")
    register.add_argument("--config", type=Path,
                          help="the model's config (new models): a .yaml/.yml file is placed as "
                               "config.yaml, a .pbtxt file as config.pbtxt, whatever its name")
    register.add_argument("--notes", default="", help="free text kept with the version")
    sub.add_parser("list", parents=[options], help="every version, its state and aliases")
    describe = sub.add_parser("describe", parents=[options],
                              help="one model or version: a summary, or everything with --json")
    describe.add_argument("target", metavar="NAME[:VERSION]")
    describe.add_argument("--json", action="store_true",
                          help=f"everything as JSON, with the last {view.HISTORY_LIMIT} changes")
    unregister = sub.add_parser("unregister", parents=[options], help="retire a version")
    unregister.add_argument("target", type=_target, metavar="NAME:VERSION")
    unregister.add_argument("--force", action="store_true",
                            help="even while an alias or the traffic policy points at it, "
                                 "or when it is the model's last ready version")
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
        print(view.version_table(lifecycle_, lifecycle_.versions(), view.width()))
    elif command == "describe":
        print(_describe(registry, lifecycle_, args.target, args.json))
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


def _describe(registry: Registry, lifecycle_: Lifecycle, target: str, as_json: bool) -> str:
    """A readable summary (signature, state, traffic share, aliases, recent changes), or with
    --json everything as JSON."""
    model, _, version = target.partition(":")
    records = [r for r in lifecycle_.versions(model) if not version or r.version == version]
    if not records:
        raise RegistryError(f"no registered version matches {target!r}")
    if as_json:
        return view.describe_json(registry, lifecycle_, model, version, records)
    return view.describe_text(registry, lifecycle_, model, version, records, view.width())
