"""The state file packed in slices (so a 10,000-vehicle save never holds the event loop for long) is the same
document, byte for byte, as the image packed in one piece."""

from __future__ import annotations

from support import FakeClock, wire_snapshot

from tvm_observability import codec
from tvm_observability.aggregator import persistence, slices, state_image
from tvm_observability.aggregator.fleet import FleetSettings, FleetState
from tvm_observability.aggregator.ingest import parse_snapshot


def fleet_of(count: int) -> FleetState:
    fleet = FleetState([f"V{i}" for i in range(count)], FleetSettings(offline_after_s=15.0), clock=FakeClock())
    for i in range(0, count, 3):  # some vehicles never heard from: they have nothing to keep
        wire = wire_snapshot(f"V{i}", errors={"E_MOTOR": i})
        fleet.apply(parse_snapshot(wire), codec.encode_wire(wire))
    fleet.apply(parse_snapshot(wire_snapshot("V0", boot_id="boot-b", seq=1)))  # a second boot
    return fleet


async def test_sliced_image_is_the_whole_image(monkeypatch):
    monkeypatch.setattr(slices, "SLICE_S", 0.0)  # a pause after every vehicle: many slices even for a small fleet
    fleet = fleet_of(100)
    pauses = 0
    real_pause = persistence.pause

    async def counting_pause(until: float) -> None:
        nonlocal pauses
        pauses += 1
        await real_pause(until)

    monkeypatch.setattr(persistence, "pause", counting_pause)
    sliced = await persistence.packed_image(fleet, pause_budget_s=5.0)
    assert pauses == len(list(state_image.vehicle_images(fleet)))
    assert sliced == codec.pack_state(state_image.to_image(fleet))
    assert codec.unpack_state(sliced)["vehicles"].keys() == state_image.to_image(fleet)["vehicles"].keys()


async def test_sliced_image_of_an_empty_fleet():
    fleet = fleet_of(0)
    assert await persistence.packed_image(fleet) == codec.pack_state(state_image.to_image(fleet))


async def test_restore_reads_a_sliced_image():
    fleet = fleet_of(20)
    restored = FleetState([f"V{i}" for i in range(20)], FleetSettings(offline_after_s=15.0), clock=FakeClock())
    state_image.restore(restored, codec.unpack_state(await persistence.packed_image(fleet)), keep_unknown=False)
    assert state_image.to_image(restored)["vehicles"] == state_image.to_image(fleet)["vehicles"]
