#!/usr/bin/env python3
"""Decodes the BTHome corpus with the bthome-ble reference package (the oracle).

Usage: bthome_oracle.py CORPUS. Prints one JSON object per corpus line:
{"name", "sensors": {key: value}, "binary": {key: bool}, "events": [[key, type, props]],
 "sw_version", "device_type_id"}. Each line is decoded by a fresh parser so that packet-id
de-duplication (which the Rust side tests separately) does not hide objects.
Exits 3 with a message when bthome-ble cannot be imported.
"""

import json
import logging
import sys
import time

try:
    from bthome_ble import BTHomeBluetoothDeviceData
    from habluetooth import BluetoothServiceInfoBleak
except ImportError as error:  # the Rust test turns this into a clear failure
    print(f"bthome-ble is not importable: {error}", file=sys.stderr)
    sys.exit(3)

# The reference decoder logs every refusal; the test compares outcomes, not logs.
logging.disable(logging.CRITICAL)

UUID = "0000fcd2-0000-1000-8000-00805f9b34fb"


def jsonable(value):
    if hasattr(value, "timestamp"):
        return int(value.timestamp())
    return value


def decode(address: str, key: str, data: bytes) -> dict:
    parser = BTHomeBluetoothDeviceData(None if key == "-" else bytes.fromhex(key))
    info = BluetoothServiceInfoBleak(
        name="BTHome test", address=address, rssi=-60, manufacturer_data={},
        service_data={UUID: data}, service_uuids=[UUID], source="local", device=None,
        advertisement=None, connectable=False, time=time.monotonic(), tx_power=None, raw=None,
    )
    update = parser.update(info)
    sensors = {k.key: jsonable(v.native_value) for k, v in update.entity_values.items()}
    binary = {k.key: bool(v.native_value) for k, v in update.binary_entity_values.items()}
    events = sorted(
        [k.key, v.event_type, v.event_properties] for k, v in update.events.items()
    )
    sw = None
    for dev in update.devices.values():
        sw = dev.sw_version
    return {
        "sensors": sensors,
        "binary": binary,
        "events": events,
        "sw_version": sw,
        "device_type_id": parser.device_type_id,
    }


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as corpus:
        for line in corpus:
            if not line.strip() or line.startswith("#"):
                continue
            name, address, key, data = line.split()
            out = decode(address, key, bytes.fromhex(data))
            out["name"] = name
            print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    main()
