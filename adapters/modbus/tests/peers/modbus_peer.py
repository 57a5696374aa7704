"""Modbus TCP device simulators for the s2gw-modbus tests (pymodbus 3.16).

Usage: modbus_peer.py PORT KIND [options]
  KIND: sunspec | fronius | sma | goe | keba | heidelberg | solaredge | abb | sdm630
  sma: a Sunny Tripower's SunSpec chain (17 models, 123 at 40343, its enable flag at 1)
  goe: the go-eCharger, which refuses FC6 (illegal function), as its table says
  keba: the KEBA P30, which takes FC6 writes only and reads of at most one u32 (its
        guide V1.02, p. 8)
  heidelberg: the Heidelberg Energy Control, which takes the FC6 writes its table lists
              and no FC16 (use --framer rtu, as on its RS-485 bus)
  solaredge: SolarEdge's SunSpec map and its power control registers (0xF300...)
  sunspec: --base N --models 1,103,123 [--preset-limit PCT] [--fc6-only]
           [--fail-writes] [--ignore-writes] [--preset-storctl MODE]
           [--revert-timer]
  any kind: [--framer rtu] (RTU frames over the TCP socket instead of MBAP)
            [--single-client] (like many inverters: a second client is disconnected at
            once, printed as {"refused_client": N})

--preset-storctl MODE: model 124 as an installer left it: StorCtl_Mod = MODE,
InWRte = 20 %, OutWRte = 30 %, InOutWRte_RvrtTms = 0 (storage control not ours).

--revert-timer: the inverter's own revert timer (model 123 WMaxLimPct_RvrtTms, model 704
WMaxLimPctRvrtTms): once a limit is enabled with a non-zero revert time and no write to
the model's limit registers came for that long, the peer clears the enable itself and
prints {"reverted": MODEL, "after_s": SECONDS}.

Every write request is printed to stdout as one JSON line
{"fc": 16, "address": 40247, "values": [600]} so the test can see exactly which
function codes and registers the gateway used. The test waits for readiness by
connecting with retries.
"""

import argparse
import asyncio
import json
import struct
import sys

from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice


def s16(v):
    return v & 0xFFFF


def text(s, regs):
    b = s.encode().ljust(regs * 2, b"\0")
    return [int.from_bytes(b[i:i + 2], "big") for i in range(0, regs * 2, 2)]


def u32(v):
    return [(v >> 16) & 0xFFFF, v & 0xFFFF]


def f32(v):
    hi, lo = struct.unpack(">HH", struct.pack(">f", v))
    return [hi, lo]


def f64(v):
    return list(struct.unpack(">HHHH", struct.pack(">d", v)))


def model(mid, length, points):
    regs = [mid, length] + [0] * length
    for offset, words in points.items():
        regs[offset:offset + len(words)] = words
    return regs


def sunspec_models(preset, storctl=None):
    lim123 = [1000, 1] if preset is None else [preset * 10, 1]
    ena123 = 0 if preset is None else 1
    pct704 = 10000 if preset is None else preset * 100
    ena704 = 0 if preset is None else 1
    return {
        1: model(1, 66, {2: text("s2gw-test", 16), 18: text("Inverter 5000", 16),
                         42: text("1.2.3", 8), 50: text("SN0001", 16)}),
        103: model(103, 50, {14: [12345], 15: [s16(-1)], 16: [5000], 17: [s16(-2)],
                             24: u32(123456), 26: [0], 31: [13000], 32: [s16(-1)],
                             38: [4]}),
        120: model(120, 26, {3: [5000], 4: [0]}),
        121: model(121, 30, {2: [5000], 22: [0]}),
        123: model(123, 24, {5: [lim123[0]], 7: [0], 9: [ena123], 23: [s16(-1)]}),
        124: model(124, 24, {2: [5000], 8: [655], 18: [0], 22: [s16(-1)],
                             25: [s16(-1)],
                             **({} if storctl is None else
                                {5: [storctl], 12: [300], 13: [200], 15: [0]})}),
        # Float inverters (SunSpec 111/112/113, L = 60): W 22, Hz 24, WH 32, DCW 38,
        # St 48, all float32 but St.
        **{mid: model(mid, 60, {22: f32(1234.5), 24: f32(50.0), 32: f32(123456.0),
                                38: f32(1300.0), 48: [4]})
           for mid in (111, 112, 113)},
        # DER AC measurement (701, L = 153): InvSt 4 (4 = MPPT), W 10, TotWhInj 19 (u64
        # 123456),
        # WL1/WL2/WL3 41/64/87, W_SF 116, TotWh_SF 120.
        701: model(701, 153, {2: [3], 3: [2], 4: [4], 10: [12345], 19: [0, 0, 1, 57920],
                              41: [4115], 64: [4115], 87: [4115], 116: [s16(-1)],
                              120: [0]}),
        704: model(704, 65, {14: [ena704], 15: [pct704], 16: [10000], 17: [0],
                             18: u32(0), 54: [s16(-2)], 55: [0]}),
    }


def sunspec(base, ids, preset, storctl=None):
    models = sunspec_models(preset, storctl)
    regs = [0x5375, 0x6E53]
    for mid in ids:
        regs += models[mid]
    regs += [0xFFFF, 0]
    return {"hr": [(base, regs)]}


def fronius():
    # Fronius Datamanager SunSpec map in float mode (42,0410,2049, see
    # config/profiles/modbus-fronius.toml): common L = 65 (DA last), 113 at 40070,
    # 120 at 40132, 121 at 40160, 122 at 40192, 123 at 40238, 160 at 40264 (registers,
    # 1-based; protocol addresses one less).
    common = model(1, 65, {2: text("Fronius", 16), 18: text("Symo 5.0-3-M", 16),
                           42: text("3.14.1-10", 8), 50: text("FR0001", 16), 66: [1]})
    inverter = model(113, 60, {22: f32(1234.5), 24: f32(50.0), 32: f32(123456.0),
                               38: f32(1300.0), 48: [4]})
    nameplate = model(120, 26, {2: [4], 3: [5000], 4: [0]})
    settings = model(121, 30, {2: [5000], 22: [0]})
    extended = model(122, 44, {})
    controls = model(123, 24, {5: [10000], 7: [0], 9: [0], 23: [s16(-2)]})
    mppt = model(160, 48, {})
    regs = [0x5375, 0x6E53] + common + inverter + nameplate + settings + extended \
        + controls + mppt + [0xFFFF, 0]
    return {"hr": [(40000, regs)]}


def sma():
    # SMA Sunny Tripower's SunSpec chain at the addresses OpenEMS reads, which SMA's
    # STP60-SunSpec_Modbus-TI-en-12 tables print too (see
    # config/profiles/modbus-sma.toml): models without values here are zeros of the
    # right length, so discovery must walk past them. In 123: WMaxLimPct 100.0 % with
    # WMaxLimPct_SF -1, WMaxLim_Ena 1 at 100 %, as SMA keeps it; the revert timer
    # writable, as the profile needs it (TI-en-12 shows it read-only on the STP60).
    base = sunspec_models(None)
    common = model(1, 66, {2: text("SMA", 16), 18: text("STP10.0-3AV-40", 16),
                           42: text("3.10.10.R", 8), 50: text("3005000001", 16),
                           66: [126]})
    controls = model(123, 24, {5: [1000], 7: [0], 9: [1], 23: [s16(-1)]})
    chain = [common, model(11, 13, {}), model(12, 98, {}), base[103], base[120],
             base[121], model(122, 44, {}), controls]
    chain += [model(mid, n, {}) for mid, n in ((124, 24), (126, 64), (127, 10),
                                              (128, 14), (131, 64), (132, 64),
                                              (160, 128), (129, 60), (130, 60))]
    regs = [0x5375, 0x6E53] + [r for m in chain for r in m] + [0xFFFF, 0]
    return {"hr": [(40000, regs)]}


def goe():
    # go-eCharger API v2 Modbus table (modbus-en.md, wire addresses): charging at
    # 3.6 kW, 3 x 5.2 A, 1234.5 kWh charged in total; AMPERE_VOLATILE 16 A,
    # FORCE_STATE 0 (neutral).
    ir = [0] * 160
    ir[100] = 2
    for a, v in {114: 52, 116: 52, 118: 52, 120: 360, 128: 12345,
                 146: 12, 148: 12, 150: 12}.items():
        ir[a:a + 2] = u32(v)
    hr = [0] * 140
    hr[299 - 200] = 16
    hr[337 - 200] = 0
    return {"ir": [(0, ir)], "hr": [(200, hr)]}


def keba():
    # KEBA P30 (Modbus TCP programmers guide V1.02, see
    # config/profiles/modbus-keba-p30.toml): u32 holding registers, high word first;
    # charging (1000 = 3) at 7.36 kW (1020 in mW), 12345678.9 Wh in total (1036 in
    # 0.1 Wh, as P30s report it), product 312110 (1016: P30, cable, 16 A, c-series,
    # standard meter, no RFID), failsafe timeout 0 (1602, off; not in V1.02). The write
    # registers 5004, 5014, 5018 are kept here only so writes land.
    regs = {1000: u32(3), 1004: u32(7), 1016: u32(312110), 1020: u32(7360000),
            1036: u32(123456789), 1602: u32(0)}
    return {"hr": [(a, v) for a, v in regs.items()] + [(5000, [0] * 24)]}


def heidelberg():
    # Heidelberg Energy Control, from its register table (layout 1.0.7, 22 February 2021;
    # see config/profiles/modbus-heidelberg-ec.toml): input registers 4..18 (layout
    # 1.0.7, C2 charging, 16.0/15.9/16.1 A, 230 V, 11040 VA, 4321000 VAh since
    # installation), holding 257..262 (watchdog 15 s, standby enabled, unlocked, 16 A,
    # failsafe 0 A).
    ir = [0] * 19
    ir[4] = 0x0107
    ir[5] = 7
    ir[6:9] = [160, 159, 161]
    ir[10:13] = [230, 230, 230]
    ir[14] = 11040
    ir[17:19] = u32(4321000)
    hr = [15000, 0, 1, 0, 160, 0]
    return {"ir": [(0, ir)], "hr": [(257, hr)]}


def f32_low_first(v):
    hi, lo = f32(v)
    return [lo, hi]


def solaredge():
    # SolarEdge (config/profiles/modbus-solaredge.toml): SunSpec common model (L = 65,
    # "SolarEdge") and inverter model 103 at 40069 (W 1234.5 with W_SF -1, WH 123456 Wh,
    # St 4 MPPT); Enhanced Dynamic Power Control registers with 32-bit values low word
    # first: enable 0 (the default), max active power 5000 W, the fallback limit at its
    # default 100 %, but a command timeout of 120 s as an earlier controller left it
    # (dbus-fronius writes 120), so a gateway asking for 60 s has one setting to change.
    common = model(1, 65, {2: text("SolarEdge", 16), 18: text("SE5K-RW0TEBEN4", 16),
                           42: text("0004.0020.0036", 8), 50: text("7E1234AB", 16),
                           66: [1]})
    inverter = model(103, 50, {14: [12345], 15: [s16(-1)], 24: u32(123456), 26: [0],
                               38: [4]})
    sunspec_map = [0x5375, 0x6E53] + common + inverter + [0xFFFF, 0]
    control = [0] * 0x40
    control[0x00:0x01] = [0]
    control[0x04:0x06] = f32_low_first(5000.0)
    control[0x10:0x12] = [120, 0]
    control[0x12:0x14] = f32_low_first(100.0)
    control[0x22:0x24] = f32_low_first(100.0)
    return {"hr": [(40000, sunspec_map), (0xF300, control)]}


def abb():
    # ABB Terra AC: holding registers, two words each.
    regs = {0x400C: u32(2), 0x400E: u32(16000), 0x4010: u32(16000),
            0x4012: u32(15900), 0x4014: u32(16100), 0x401C: u32(11040),
            0x401E: u32(4321), 0x4100: u32(32000)}
    return {"hr": [(a, v) for a, v in regs.items()]}


def sdm630():
    # Eastron SDM630: float32 input registers.
    # The meter answers for its whole range (unlisted registers read 0), so reads
    # across holes work, as on the real meter.
    regs = [0] * 0x0160
    for a, v in {0x0000: f32(230.1), 0x0002: f32(229.8), 0x0004: f32(231.0),
                 0x000C: f32(1000.5), 0x000E: f32(-200.25), 0x0010: f32(300.0),
                 0x0034: f32(1100.25), 0x0046: f32(50.01),
                 0x0156: f32(12345.5)}.items():
        regs[a:a + 2] = v
    return {"ir": [(0, regs)]}


def blocks(spec):
    def sims(key):
        return [SimData(a, values=v, datatype=DataType.REGISTERS)
                for a, v in sorted(spec.get(key, []))]
    # Coils and discrete inputs are unused by these devices, but the tuple needs them.
    bits = [SimData(0, values=[False] * 16, datatype=DataType.BITS)]
    hr = sims("hr") or [SimData(0, values=[0], datatype=DataType.REGISTERS)]
    ir = sims("ir") or [SimData(0, values=[0], datatype=DataType.REGISTERS)]
    return (bits, list(bits), hr, ir)


# Per limit model: (enable, revert time, revert time is u32) offsets, and the first and
# last offset whose write restarts the timer.
REVERT_POINTS = {123: (9, 7, False, 5, 9), 704: (14, 18, True, 14, 19)}


def model_starts(base, ids):
    lengths = {mid: len(regs) for mid, regs in sunspec_models(None).items()}
    starts, address = {}, base + 2
    for mid in ids:
        starts[mid] = address
        address += lengths[mid]
    return starts


class RevertTimer:
    """The inverter's revert timer over the simulator's live holding registers."""

    def __init__(self, starts):
        self.models = {m: a for m, a in starts.items() if m in REVERT_POINTS}
        self.regs = None  # (start address, the live register list), from the first access
        self.written = {m: None for m in self.models}

    def seen(self, start, registers, address, count, values):
        self.regs = (start, registers)
        if values is None:
            return
        for mid, at in self.models.items():
            first, last = at + REVERT_POINTS[mid][3], at + REVERT_POINTS[mid][4]
            if address <= last and address + count > first:
                self.written[mid] = asyncio.get_running_loop().time()

    def expire(self):
        if self.regs is None:
            return
        start, regs = self.regs
        now = asyncio.get_running_loop().time()
        for mid, at in self.models.items():
            ena, rvrt, wide, _, _ = REVERT_POINTS[mid]
            e, r = at + ena - start, at + rvrt - start
            secs = (regs[r] << 16 | regs[r + 1]) if wide else regs[r]
            since = self.written[mid]
            if regs[e] == 1 and secs > 0 and since is not None and now - since >= secs:
                regs[e] = 0
                self.written[mid] = None
                print(json.dumps({"reverted": mid, "after_s": round(now - since, 3)}),
                      flush=True)

    async def run(self):
        while True:
            await asyncio.sleep(0.05)
            self.expire()


def make_action(args, timer=None):
    async def action(fc, start, address, count, registers, values):
        if timer is not None and fc in (3, 6, 16, 22, 23):
            timer.seen(start, registers, address, count, values)
        if values is None:
            # The KEBA reads one register pair per request, never across pairs.
            if args.kind == "keba" and count > 2:
                return ExcCodes.ILLEGAL_ADDRESS
            return None
        print(json.dumps({"fc": fc, "address": address,
                          "values": [int(v) for v in values]}), flush=True)
        if args.kind == "goe" and fc == 6:
            return ExcCodes.ILLEGAL_FUNCTION
        if args.kind in ("keba", "heidelberg") and fc == 16:
            return ExcCodes.ILLEGAL_FUNCTION
        if args.fail_writes:
            return ExcCodes.DEVICE_FAILURE
        if args.fc6_only and fc == 16 and count == 1:
            return ExcCodes.ILLEGAL_ADDRESS
        if args.ignore_writes:
            # Acknowledge but keep the old values: the read-back must notice.
            values[:] = registers[address - start:address - start + count]
        return None
    return action


class SingleClientServer(ModbusTcpServer):
    """Accepts one client at a time, as many inverters and chargers do."""

    refused = 0

    def callback_new_connection(self):
        handler = super().callback_new_connection()
        if self.active_connections:
            def refuse(transport):
                self.active_connections.pop(handler.unique_id, None)
                handler.listener = None
                transport.close()
                SingleClientServer.refused += 1
                print(json.dumps({"refused_client": SingleClientServer.refused}),
                      flush=True)
            handler.connection_made = refuse
        return handler


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("port", type=int)
    p.add_argument("kind", choices=["sunspec", "fronius", "sma", "goe", "keba", "heidelberg",
                                     "solaredge", "abb", "sdm630"])
    p.add_argument("--base", type=int, default=40000)
    p.add_argument("--models", default="1,103,123")
    p.add_argument("--preset-limit", type=int)
    p.add_argument("--fc6-only", action="store_true")
    p.add_argument("--fail-writes", action="store_true")
    p.add_argument("--ignore-writes", action="store_true")
    p.add_argument("--preset-storctl", type=int)
    p.add_argument("--framer", choices=["socket", "rtu"], default="socket")
    p.add_argument("--single-client", action="store_true")
    p.add_argument("--revert-timer", action="store_true")
    args = p.parse_args()
    timer = None
    if args.kind == "sunspec":
        ids = [int(m) for m in args.models.split(",")]
        spec = sunspec(args.base, ids, args.preset_limit, args.preset_storctl)
        if args.revert_timer:
            timer = RevertTimer(model_starts(args.base, ids))
    elif args.kind == "fronius":
        spec = fronius()
    elif args.kind == "sma":
        spec = sma()
    elif args.kind == "goe":
        spec = goe()
    elif args.kind in ("keba", "heidelberg", "solaredge"):
        spec = {"keba": keba, "heidelberg": heidelberg, "solaredge": solaredge}[args.kind]()
    else:
        spec = abb() if args.kind == "abb" else sdm630()
    device = SimDevice(0, simdata=blocks(spec), action=make_action(args, timer))
    framer = FramerType.RTU if args.framer == "rtu" else FramerType.SOCKET
    kind = SingleClientServer if args.single_client else ModbusTcpServer
    server = kind(device, framer=framer, address=("127.0.0.1", args.port))
    await server.serve_forever(background=True)
    # The port it listens on (port 0 lets the OS choose): the test waits for this line,
    # so it never races another test for a port or talks to another test's peer.
    port = server.transport.sockets[0].getsockname()[1]
    print(json.dumps({"listening": port}), flush=True)
    if timer is not None:
        asyncio.get_running_loop().create_task(timer.run())
    await server.serving


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
