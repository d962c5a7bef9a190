"""The ownership map (decision record 0005): placement, the map file, the `shard:` config and what a shard exports."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from support import FakeClock, wire_snapshot

from tvm_observability.aggregator import shards
from tvm_observability.aggregator.collector import Exposition, FleetCollector
from tvm_observability.aggregator.config import ConfigError, parse_config
from tvm_observability.aggregator.fleet import FleetSettings, FleetState
from tvm_observability.aggregator.fleet_view import build_view
from tvm_observability.aggregator.ingest import parse_snapshot
from tvm_observability.aggregator.settings import derive, plan_reload

FLEET = [f"V{i:04d}" for i in range(2000)]


def test_every_vehicle_has_one_owner_and_the_shards_share_the_fleet() -> None:
    shard_map = shards.assign(FLEET, ["a", "b", "c", "d"])
    assert sorted(shard_map.owner) == FLEET
    sizes = [len(shard_map.owned_by(s)) for s in shard_map.shards]
    assert sum(sizes) == len(FLEET)
    assert min(sizes) > len(FLEET) / 4 * 0.8 and max(sizes) < len(FLEET) / 4 * 1.2


def test_placement_does_not_depend_on_the_order_of_vehicles_or_shards() -> None:
    one = shards.assign(FLEET, ["a", "b", "c"])
    other = shards.assign(reversed(FLEET), ["c", "a", "b"])
    assert dict(one.owner) == dict(other.owner)


@settings(max_examples=25, deadline=None)
@given(k=st.integers(min_value=1, max_value=8), salt=st.text(alphabet="abcdefgh", min_size=1, max_size=6))
def test_adding_a_shard_moves_about_one_in_k_plus_one_and_only_to_the_new_shard(k: int, salt: str) -> None:
    names = [f"{salt}-{i}" for i in range(k)]
    before = shards.assign(FLEET, names)
    after = shards.assign(FLEET, [*names, f"{salt}-new"])
    moved = shards.moved(before, after)
    assert all(after.owner[vid] == f"{salt}-new" for vid in moved)
    expected = len(FLEET) / (k + 1)
    assert expected * 0.75 < len(moved) < expected * 1.25


def test_removing_a_shard_moves_only_its_own_vehicles() -> None:
    before = shards.assign(FLEET, ["a", "b", "c"])
    after = shards.assign(FLEET, ["a", "c"])
    assert set(shards.moved(before, after)) == before.owned_by("b")


def test_map_file_round_trips_and_is_an_haproxy_map() -> None:
    shard_map = shards.assign(["V1", "V2", "V3"], ["a", "b"])
    text = shards.render(shard_map)
    assert shards.parse(text) == shard_map
    entries = [line.split() for line in text.splitlines() if not line.startswith("#")]
    assert all(len(words) == 2 for words in entries) and len(entries) == 3


def test_bad_map_names_every_bad_line() -> None:
    text = "# shards: a b\nV1 a\nV1 b\nV2\nV3 c\nbad/id a\n"
    with pytest.raises(shards.ShardMapError) as caught:
        shards.parse(text)
    problems = caught.value.problems
    assert any("line 3" in p and "twice" in p for p in problems)
    assert any("line 4" in p for p in problems)
    assert any("line 6" in p for p in problems)
    assert any("c" in p and "does not list" in p for p in problems)
    with pytest.raises(shards.ShardMapError, match="no `# shards:"):
        shards.parse("V1 a\n")


def test_bad_shard_lists_are_refused() -> None:
    for names, words in (([], "at least one"), (["a", "a"], "repeated: a"), (["a b"], "must match")):
        with pytest.raises(shards.ShardMapError, match=words):
            shards.assign(["V1"], names)


# -- the `shard:` section ---------------------------------------------------------------------------


def _config(tmp_path: Path, roster: list[str], shard: str, shard_map: shards.ShardMap, **extra: object) -> dict:
    path = tmp_path / "shards.map"
    path.write_text(shards.render(shard_map), encoding="utf-8")
    return {
        "auth_required": False,
        "vehicles": {vid: None for vid in roster},
        "shard": {"name": shard, "map_file": str(path)},
        **extra,
    }


def test_shard_config_derives_the_owned_vehicles(tmp_path: Path) -> None:
    shard_map = shards.assign(["V1", "V2", "V3", "V4"], ["a", "b"])
    config = parse_config(_config(tmp_path, ["V1", "V2", "V3", "V4"], "a", shard_map))
    assert derive(config).fleet.owned == shard_map.owned_by("a")
    assert derive(parse_config({"auth_required": False})).fleet.owned is None


def test_shard_config_names_every_problem(tmp_path: Path) -> None:
    shard_map = shards.assign(["V1"], ["a", "b"])
    with pytest.raises(ConfigError) as caught:
        parse_config(_config(tmp_path, ["V1", "V2", "V3"], "c", shard_map))
    text = "\n".join(caught.value.problems)
    assert "shard.name: shard 'c' is not one of the map's shards (a, b)" in text
    assert shards.unplaced(shard_map, ["V1", "V2", "V3"]) is not None
    assert "missing from the shard map: V2, V3;" in str(shards.unplaced(shard_map, ["V1", "V2", "V3"]))
    assert shards.unplaced(shard_map, ["V1"]) is None
    with pytest.raises(ConfigError, match=r"shard\.map_file: cannot read"):
        parse_config({"auth_required": False, "shard": {"name": "a", "map_file": str(tmp_path / "none")}})
    (tmp_path / "bad.map").write_text("V1 a\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"shard\.name: must match.*\n.*shard\.map_file: .*bad\.map: no `# shards:"):
        parse_config({"auth_required": False, "shard": {"name": "a b", "map_file": str(tmp_path / "bad.map")}})


def test_reload_applies_a_new_map_but_not_a_new_shard_name(tmp_path: Path) -> None:
    roster = ["V1", "V2", "V3", "V4", "V5", "V6"]
    running = parse_config(_config(tmp_path, roster, "a", shards.assign(roster, ["a", "b"])))
    (tmp_path / "new").mkdir()
    grown = shards.assign(roster, ["a", "b", "c"])
    new = parse_config(_config(tmp_path / "new", roster, "b", grown))
    plan = plan_reload(running, new)
    assert plan.needs_restart == ["shard.name"]
    assert plan.config.shard is not None and plan.config.shard.name == "a"
    assert derive(plan.config).fleet.owned == grown.owned_by("a")


# -- what a shard exports ---------------------------------------------------------------------------


def _shard_fleet(clock: FakeClock, owned: frozenset[str]) -> FleetState:
    return FleetState(["V1", "V2", "V3"], FleetSettings(offline_after_s=15, owned=owned), clock=clock)


def _exported(fleet: FleetState) -> dict[str, float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(fleet))
    metrics = {metric.name: metric.samples for metric in registry.collect()}
    up = {sample.labels["vehicle_id"]: sample.value for sample in metrics["vehicle_up"]}
    assert [s.value for s in metrics["vehicles_total"]] == [len(up)]
    assert [s.value for s in metrics["vehicles_online"]] == [sum(up.values())]
    text = Exposition(fleet).render("")[0].decode()
    fast = {line.split('"')[1]: float(line.split()[-1]) for line in text.splitlines() if line.startswith("vehicle_up{")}
    assert fast == up  # the /metrics fast path and the reference rendering agree
    assert f"\nvehicles_total {len(up)}.0\n" in text
    return up


def test_a_shard_reports_its_own_vehicles_and_others_only_while_they_push_to_it() -> None:
    clock = FakeClock()
    fleet = _shard_fleet(clock, frozenset({"V1", "V2"}))
    assert _exported(fleet) == {"V1": 0.0, "V2": 0.0}  # its never-seen vehicles are its to report offline
    fleet.apply(parse_snapshot(wire_snapshot("V3")))  # misrouted, or moved here by a new map
    fleet.apply(parse_snapshot(wire_snapshot("V1")))
    assert _exported(fleet) == {"V1": 1.0, "V2": 0.0, "V3": 1.0}
    assert {row.vehicle_id for row in build_view(fleet).rows} == {"V1", "V2", "V3"}
    clock.advance(16)
    assert _exported(fleet) == {"V1": 0.0, "V2": 0.0}  # V3 stopped pushing here: not this shard's to report
    assert {row.vehicle_id for row in build_view(fleet).rows} == {"V1", "V2"}
    assert build_view(fleet).to_json()["vehicles_total"] == 2


def test_shard_map_command_writes_the_map_and_counts_what_moved(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tvm_observability.aggregator.cli import main

    config = tmp_path / "aggregator.yaml"
    config.write_text(
        "auth_required: false\nvehicles:\n" + "".join(f"  {vid}: null\n" for vid in FLEET[:300]), encoding="utf-8"
    )
    output = tmp_path / "vehicle-shards.map"
    assert main(["shard-map", "--config", str(config), "--shards", "a,b", "--output", str(output)]) == 0
    two = shards.parse(output.read_text(encoding="utf-8"))
    assert two == shards.assign(FLEET[:300], ["a", "b"])
    assert main(["shard-map", "--config", str(config), "--shards", "a,b,c", "--output", str(output)]) == 0
    three = shards.parse(output.read_text(encoding="utf-8"))
    assert f"300 vehicles on 3 shards; {len(shards.moved(two, three))} moved" in capsys.readouterr().out
    assert 60 < len(shards.moved(two, three)) < 140
    assert main(["shard-map", "--config", str(config), "--shards", "a,a"]) == 2
    assert "repeated: a" in capsys.readouterr().err
