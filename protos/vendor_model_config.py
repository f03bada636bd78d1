"""Write protos/model_config.proto from Triton's schema as the installed tritonclient ships it.

Usage: ``python protos/vendor_model_config.py`` (maintainers only; then ``make proto``). The text is
rebuilt from the FileDescriptorProto inside ``tritonclient/grpc/model_config_pb2.py``, so every
message, field name, number, type and enum is Triton's; LATER adds what Triton added after that
client release. The file's header carries tritonclient's licence text.
"""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path
from typing import TypeAlias

from google.protobuf import descriptor_pb2 as dpb

TARGET = Path(__file__).resolve().parent / "model_config.proto"
Field: TypeAlias = dpb.FieldDescriptorProto

_SCALARS = {
    Field.TYPE_DOUBLE: "double", Field.TYPE_FLOAT: "float", Field.TYPE_INT64: "int64",
    Field.TYPE_UINT64: "uint64", Field.TYPE_INT32: "int32", Field.TYPE_FIXED64: "fixed64",
    Field.TYPE_FIXED32: "fixed32", Field.TYPE_BOOL: "bool", Field.TYPE_STRING: "string",
    Field.TYPE_BYTES: "bytes", Field.TYPE_UINT32: "uint32", Field.TYPE_SFIXED32: "sfixed32",
    Field.TYPE_SFIXED64: "sfixed64", Field.TYPE_SINT32: "sint32", Field.TYPE_SINT64: "sint64",
}


def _field(name: str, number: int, kind: int, type_name: str = "",
           repeated: bool = False) -> Field:
    label = Field.LABEL_REPEATED if repeated else Field.LABEL_OPTIONAL
    return Field(name=name, number=number, type=kind, type_name=type_name, label=label)


def _model_metrics() -> dpb.DescriptorProto:
    """Triton's ModelMetrics (ModelConfig field 26), newer than tritonclient 2.41."""
    control = dpb.DescriptorProto(name="MetricControl")
    control.nested_type.add(name="MetricIdentifier").field.append(
        _field("family", 1, Field.TYPE_STRING))
    control.nested_type.add(name="HistogramOptions").field.append(
        _field("buckets", 1, Field.TYPE_DOUBLE, repeated=True))
    prefix = ".inference.ModelMetrics.MetricControl."
    control.field.append(_field("metric_identifier", 1, Field.TYPE_MESSAGE,
                                prefix + "MetricIdentifier"))
    control.oneof_decl.add(name="metric_options")
    options = _field("histogram_options", 2, Field.TYPE_MESSAGE, prefix + "HistogramOptions")
    options.oneof_index = 0
    control.field.append(options)
    metrics = dpb.DescriptorProto(name="ModelMetrics")
    metrics.nested_type.append(control)
    metrics.field.append(_field("metric_control", 1, Field.TYPE_MESSAGE,
                                ".inference.ModelMetrics.MetricControl", repeated=True))
    return metrics


# Fields Triton added after the tritonclient release installed here (message, field).
LATER = (
    ("ModelInput", _field("is_non_linear_format_io", 9, Field.TYPE_BOOL)),
    ("ModelOutput", _field("is_non_linear_format_io", 7, Field.TYPE_BOOL)),
    ("ModelConfig", _field("runtime", 25, Field.TYPE_STRING)),
    ("ModelConfig", _field("model_metrics", 26, Field.TYPE_MESSAGE, ".inference.ModelMetrics")),
)


def add_later(proto: dpb.FileDescriptorProto) -> None:
    """Add LATER (and the ModelMetrics message) where the client's schema lacks them."""
    messages = {m.name: m for m in proto.message_type}
    if "ModelMetrics" not in messages:
        proto.message_type.insert(len(proto.message_type) - 1, _model_metrics())
    for message_name, field in LATER:
        message = messages[message_name]
        if field.number not in {f.number for f in message.field}:
            message.field.append(field)


def _type(field: Field, package: str) -> str:
    if field.type in _SCALARS:
        return _SCALARS[field.type]
    return field.type_name.removeprefix(f".{package}.")


def _check(field: Field, where: str) -> None:
    """Refuse what this printer cannot write, rather than dropping it from the text."""
    if field.HasField("options") or field.HasField("default_value") or \
            field.proto3_optional or field.label == Field.LABEL_REQUIRED:
        raise SystemExit(f"{where}.{field.name}: a field feature this script does not print")


class Printer:
    """proto3 text for one FileDescriptorProto; nested types print before fields."""

    def __init__(self, package: str) -> None:
        self.package = package
        self.lines: list[str] = []

    def emit(self, depth: int, text: str) -> None:
        self.lines.append("  " * depth + text if text else "")

    def enum(self, enum: dpb.EnumDescriptorProto, depth: int) -> None:
        self.emit(depth, f"enum {enum.name} {{")
        for value in enum.value:
            self.emit(depth + 1, f"{value.name} = {value.number};")
        self.emit(depth, "}")

    def message(self, message: dpb.DescriptorProto, depth: int) -> None:
        self.emit(depth, f"message {message.name} {{")
        maps = {n.name: n for n in message.nested_type if n.options.map_entry}
        for enum in message.enum_type:
            self.enum(enum, depth + 1)
        for nested in message.nested_type:
            if nested.name not in maps:
                self.message(nested, depth + 1)
        for span in message.reserved_range:
            self.emit(depth + 1, f"reserved {span.start} to {span.end - 1};")
        printed: set[int] = set()
        for field in message.field:
            _check(field, message.name)
            if not field.HasField("oneof_index"):
                self.emit(depth + 1, self.field(field, maps))
            elif field.oneof_index not in printed:
                printed.add(field.oneof_index)
                self.emit(depth + 1, f"oneof {message.oneof_decl[field.oneof_index].name} {{")
                for member in message.field:
                    if member.HasField("oneof_index") and \
                            member.oneof_index == field.oneof_index:
                        self.emit(depth + 2, self.field(member, maps))
                self.emit(depth + 1, "}")
        self.emit(depth, "}")

    def field(self, field: Field, maps: dict[str, dpb.DescriptorProto]) -> str:
        entry = maps.get(field.type_name.rsplit(".", 1)[-1])
        if entry is not None:
            key, value = entry.field
            kind = f"map<{_type(key, self.package)}, {_type(value, self.package)}>"
        else:
            kind = _type(field, self.package)
            if field.label == Field.LABEL_REPEATED:
                kind = f"repeated {kind}"
        return f"{kind} {field.name} = {field.number};"


def header(version: str, licence: str) -> list[str]:
    notice = [("//" + line.removeprefix("#")).rstrip() for line in licence.splitlines()]
    return [
        "// Triton's model configuration schema, vendored for tensorgate.",
        "//",
        f"// Written by protos/vendor_model_config.py from the schema that tritonclient {version}",
        "// ships in tritonclient/grpc/model_config_pb2.py, plus the fields Triton added later",
        "// (LATER in that script). Package, message and field names and numbers are Triton's.",
        "// Do not edit by hand: rerun the script, then `make proto`.",
        "//",
        f"// Licence of the source (tritonclient {version}, LICENSE.txt; BSD-3-Clause):",
        "//",
        *notice,
    ]


def render() -> str:
    from tritonclient.grpc import model_config_pb2

    version = importlib.metadata.version("tritonclient")
    licence = importlib.metadata.distribution("tritonclient").read_text("LICENSE.txt") or ""
    if "NVIDIA" not in licence:
        raise SystemExit("tritonclient's LICENSE.txt not found in its installed metadata")
    proto = dpb.FileDescriptorProto()
    model_config_pb2.DESCRIPTOR.CopyToProto(proto)
    if proto.dependency or proto.service or proto.HasField("options"):
        raise SystemExit("model_config.proto grew imports, services or options: update this script")
    add_later(proto)
    printer = Printer(proto.package)
    printer.lines = [*header(version, licence), "", 'syntax = "proto3";', "",
                     f"package {proto.package};"]
    for enum in proto.enum_type:
        printer.emit(0, "")
        printer.enum(enum, 0)
    for message in proto.message_type:
        printer.emit(0, "")
        printer.message(message, 0)
    return "\n".join(printer.lines) + "\n"


def main() -> int:
    TARGET.write_text(render(), encoding="utf-8")
    print(TARGET)
    return 0


if __name__ == "__main__":
    sys.exit(main())
