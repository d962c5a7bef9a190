"""The ELK side as shipped: Filebeat config, the Elasticsearch index template and ILM policy (config/filebeat,
config/elasticsearch). Elasticsearch is not available here: every record the project writes is checked to be
valid JSON whose fields match the template's mapping, field by field, and the policy's phases are checked."""

from __future__ import annotations

import ast
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from support import REPO

from tvm_observability.aggregator.event_log import DEFAULT_EVENTS_FILE, event_record
from tvm_observability.aggregator.logs import FleetJsonFormatter, LogSummary, RedactSecrets
from tvm_observability.model import VehicleEvent

TEMPLATE = REPO / "config" / "elasticsearch" / "index-template.json"
POLICY = REPO / "config" / "elasticsearch" / "ilm-policy.json"
FILEBEAT = REPO / "config" / "filebeat" / "filebeat.yml"

ACCEPTS: dict[str, tuple[type, ...]] = {
    "keyword": (str, int, float, bool),  # Elasticsearch keeps a number or boolean as its string in a keyword
    "text": (str,),
    "date": (str,),
    "long": (int,),
    "integer": (int,),
    "double": (int, float),
    "boolean": (bool,),
}


def mapping() -> dict[str, Any]:
    return json.loads(TEMPLATE.read_text(encoding="utf-8"))["template"]["mappings"]  # type: ignore[no-any-return]


def leaves(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from leaves(inner, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for item in value:
            yield from leaves(item, path)
    else:
        yield path, value


def check(record: dict[str, Any]) -> list[str]:
    """Problems of one record against the mapping: an unmapped field (outside an object with `dynamic: false`),
    or a value its mapped type does not take."""
    problems = []
    for path, value in leaves(json.loads(json.dumps(record))):
        node: dict[str, Any] = mapping()
        field_type = None
        for part in path.split("."):
            props = node.get("properties", {})
            if part not in props:
                if node.get("dynamic") is False:
                    field_type = "unindexed"
                break
            node = props[part]
            if node.get("type") == "flattened":
                field_type = "flattened"
                break
        else:
            field_type = node.get("type")
        if field_type in ("unindexed", "flattened") or value is None:
            continue
        if field_type is None:
            problems.append(f"{path}: not mapped")
        elif field_type == "date" and not _is_iso(value):
            problems.append(f"{path}: {value!r} is not an ISO date")
        elif not isinstance(value, ACCEPTS[field_type]) or (field_type in ("long", "integer") and value is True):
            problems.append(f"{path}: {value!r} does not fit {field_type}")
    return problems


def _is_iso(value: Any) -> bool:
    from datetime import datetime

    try:
        return isinstance(value, str) and datetime.fromisoformat(value).tzinfo is not None
    except ValueError:
        return False


def service_records() -> list[dict[str, Any]]:
    """The service's own lines as its handler writes them: a refusal, a summary, an exception with stack."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(FleetJsonFormatter(environment="test"))
    handler.addFilter(RedactSecrets())
    logger = logging.getLogger("tvm_observability.aggregator.ingest-elk-test")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    extra = {"request_id": "r1", "vehicle_id": None, "reason": "unauthenticated", "status": 401, "remote": "10.0.0.1"}
    logger.warning("push rejected: bearer token not valid", extra=extra)
    summary = LogSummary(logger, "push rejected", burst=0)
    summary.admit("schema", "10.0.0.2")
    summary.flush()
    try:
        raise OSError("disk full")
    except OSError:
        logger.exception("cannot write state file", extra={"path": "/var/lib/x"}, stack_info=True)
    logger.info(
        "listening",
        extra={"addresses": ["127.0.0.1:9100"], "auth_required": True, "read_auth": False, "roster_vehicles": 3},
    )
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def event_records() -> list[dict[str, Any]]:
    full = VehicleEvent(
        event_seq=17,
        stamp=1_800_000_000.5,
        level="FATAL",
        source="rosout",
        component="v5.planner",
        message='no path\n{"level":"INFO"}\x1b[0m',
        code="VEH-NAV-001",
        key_values=(("port", "/dev/ttyUSB0"),),
        file="planner.cpp",
        function="plan",
        line=42,
    )
    bare = VehicleEvent(event_seq=1, stamp=0.0, level="ERROR", source="diagnostic", component="lidar", message="")
    metadata = {"host": "agg-1", "environment": "test", "version": "0.1.0"}
    return [
        event_record("V5", "boot", e, skew_s=1.5, request_id="r", received=1_800_000_001.0, metadata=metadata)
        for e in (full, bare)
    ]


def test_every_record_the_project_writes_matches_the_mapping() -> None:
    records = service_records() + event_records()
    assert len(records) == 6
    for record in records:
        assert check(record) == [], record


def test_the_check_itself_catches_a_wrong_type_and_an_unmapped_field() -> None:
    assert check({"event": {"seq": "seventeen"}, "surprise": 1}) == [
        "event.seq: 'seventeen' does not fit long",
        "surprise: not mapped",
    ]
    assert check({"timestamp": "yesterday"}) == ["timestamp: 'yesterday' is not an ISO date"]


def test_every_context_field_a_log_call_passes_is_mapped() -> None:
    """`extra=` keys of every log call in the package: each has its own mapping under `context`."""
    mapped = set(mapping()["properties"]["context"]["properties"])
    used: set[str] = set()
    for path in (REPO / "tvm_observability").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.keyword) and node.arg == "extra":
                assert isinstance(node.value, ast.Dict), f"{path}: extra= must be a dict literal"
                used |= {k.value for k in node.value.keys if isinstance(k, ast.Constant)}
    assert used - mapped == set()


def test_ids_codes_and_names_are_keywords_and_times_are_dates() -> None:
    props = mapping()["properties"]
    for name in ("level", "service", "component"):
        assert props[name]["type"] == "keyword"  # plain strings here, not ECS's objects
    assert props["@timestamp"]["type"] == props["timestamp"]["type"] == "date"
    assert props["event"]["properties"]["id"]["type"] == "keyword"
    assert props["error"]["properties"]["code"]["type"] == "keyword"
    for name in ("vehicle_id", "boot_id", "request_id"):
        assert props["context"]["properties"][name]["type"] == "keyword"


def test_the_template_uses_the_lifecycle_policy_with_explicit_ages() -> None:
    template = json.loads(TEMPLATE.read_text(encoding="utf-8"))
    assert template["template"]["settings"]["index.lifecycle.name"] == "tvm-logs"
    phases = json.loads(POLICY.read_text(encoding="utf-8"))["policy"]["phases"]
    assert list(phases) == ["hot", "warm", "cold", "delete"]
    assert [phases[p]["min_age"] for p in phases] == ["0ms", "7d", "30d", "90d"]
    assert phases["delete"]["actions"] == {"delete": {}}


def test_filebeat_reads_both_logs_as_ndjson_with_the_event_id_as_document_id() -> None:
    config = yaml.safe_load(FILEBEAT.read_text(encoding="utf-8"))
    inputs = {i["id"]: i for i in config["filebeat.inputs"]}
    assert {i["type"] for i in inputs.values()} == {"filestream"}  # not the deprecated `log` input
    for item in inputs.values():
        assert any("ndjson" in parser for parser in item["parsers"])
        stamps = [p["timestamp"] for p in item["processors"] if "timestamp" in p]
        assert stamps and stamps[0]["field"] == "timestamp"
    events = inputs["tvm-vehicle-events"]
    assert any(Path(p).match(Path(DEFAULT_EVENTS_FILE).name + "*") for p in events["paths"])
    assert events["paths"][0].startswith(str(Path(DEFAULT_EVENTS_FILE).parent))
    fingerprint = next(p["fingerprint"] for p in events["processors"] if "fingerprint" in p)
    assert fingerprint == {"fields": ["event.id"], "target_field": "@metadata._id"}
    assert config["output.elasticsearch"]["index"] == "tvm-logs"
    assert config["setup.template.enabled"] is False
