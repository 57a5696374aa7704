#!/usr/bin/env python3
"""A mocked BlueZ on a private D-Bus "system" bus, for BLE tests without a radio.

Starts its own dbus-daemon (from a generated config, so nothing touches the real system
bus), runs python-dbusmock's `bluez5` template on it, adds adapter `hci0`, and prints

    DBUS_SYSTEM_BUS_ADDRESS=<address>

on stdout once ready. Point btleplug at it by setting that variable in the process that
scans (btleplug -> bluez-async -> dbus -> libdbus reads it for the system bus).

Then it reads commands, one per line, on stdin, answering each with `ok` or `error ...`:

    add <ADDR> <NAME>         a device (unpaired, unconnected), as if just discovered
    adv <ADDR> <UUID> <HEX>   set the device's advertised service data under UUID
                              (emits PropertiesChanged, like BlueZ on a new advertisement)
    remove <ADDR>             the device disappears (InterfacesRemoved)
    quit                      stop (also on end of input); the bus and mock go with it

Needs python3-dbusmock (apt; it brings python3-dbus and python3-gi) and dbus-daemon.
Usage: bluez_mock.py [ADDR NAME UUID HEX]  -- optionally one device with service data.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time

import dbus
import dbusmock

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""

BLUEZ_MOCK_IFACE = "org.bluez.Mock"
DEVICE_IFACE = "org.bluez.Device1"


def start_bus(workdir: str) -> tuple[subprocess.Popen, str]:
    config = os.path.join(workdir, "bus.conf")
    with open(config, "w", encoding="utf-8") as f:
        f.write(BUS_CONFIG.format(socket=os.path.join(workdir, "bus")))
    daemon = subprocess.Popen(
        ["dbus-daemon", f"--config-file={config}", "--print-address", "--nofork"],
        stdout=subprocess.PIPE, text=True,
    )
    address = daemon.stdout.readline().strip()
    if not address:
        raise RuntimeError("dbus-daemon printed no address")
    return daemon, address


def start_mock(address: str) -> subprocess.Popen:
    env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=address)
    mock = subprocess.Popen(
        [sys.executable, "-m", "dbusmock", "--system", "--template", "bluez5"],
        env=env, stdout=subprocess.DEVNULL,
    )
    bus = dbus.bus.BusConnection(address)
    for _ in range(100):
        if bus.name_has_owner("org.bluez"):
            return mock
        time.sleep(0.05)
    raise RuntimeError("the bluez5 mock did not appear on the bus")


def device_path(addr: str) -> str:
    return "/org/bluez/hci0/dev_" + addr.replace(":", "_").upper()


def service_data(uuid: str, hexdata: str) -> dbus.Dictionary:
    # BlueZ's ServiceData is a{sv} with byte arrays as values.
    return dbus.Dictionary(
        {uuid: dbus.Array(bytes.fromhex(hexdata), signature="y")}, signature="sv"
    )


class Mock:
    def __init__(self, address: str):
        self.bus = dbus.bus.BusConnection(address)
        self.bluez = dbus.Interface(self.bus.get_object("org.bluez", "/"), BLUEZ_MOCK_IFACE)

    def add(self, addr: str, name: str) -> None:
        self.bluez.AddDevice("hci0", addr, name)

    def adv(self, addr: str, uuid: str, hexdata: str) -> None:
        # The mock's UpdateProperties cannot wrap a dictionary (dbusmock 0.28); the standard
        # Properties.Set stores it and emits PropertiesChanged just the same.
        device = dbus.Interface(self.bus.get_object("org.bluez", device_path(addr)), dbus.PROPERTIES_IFACE)
        device.Set(DEVICE_IFACE, "ServiceData", service_data(uuid, hexdata))

    def remove(self, addr: str) -> None:
        adapter = dbus.Interface(self.bus.get_object("org.bluez", "/org/bluez/hci0"), "org.bluez.Adapter1")
        adapter.RemoveDevice(dbus.ObjectPath(device_path(addr)))

    def command(self, words: list[str]) -> None:
        match words:
            case ["add", addr, *name]:
                self.add(addr, " ".join(name))
            case ["adv", addr, uuid, hexdata]:
                self.adv(addr, uuid, hexdata)
            case ["remove", addr]:
                self.remove(addr)
            case _:
                raise ValueError(f"unknown command {' '.join(words)!r}")


def main() -> None:
    workdir = tempfile.mkdtemp(prefix="s2gw-bluez-")
    daemon, address = start_bus(workdir)
    mock = None
    try:
        mock = start_mock(address)
        control = Mock(address)
        control.bluez.AddAdapter("hci0", "s2gw-test")
        if len(sys.argv) == 5:
            _, addr, name, uuid, hexdata = sys.argv
            control.add(addr, name)
            control.adv(addr, uuid, hexdata)
        print(f"DBUS_SYSTEM_BUS_ADDRESS={address}", flush=True)
        for line in sys.stdin:
            words = line.split()
            if not words:
                continue
            if words == ["quit"]:
                break
            try:
                control.command(words)
                print("ok", flush=True)
            except Exception as error:  # reported to the test, which decides
                print(f"error {error}", flush=True)
    finally:
        for proc in (mock, daemon):
            if proc is not None:
                proc.terminate()
                proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
