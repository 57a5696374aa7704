"""A Modbus TCP client for the s2gw tests (pymodbus 3.16): the owner's other tool.

Usage: modbus_client.py PORT
Reads one JSON request a line on stdin and answers each with one JSON line on stdout:
  {"read": "hr", "address": 40000, "count": 2, "unit": 1}
      -> {"values": [21365, 28243]} or {"exception": 2}
  {"write": "hr", "address": 40100, "values": [7], "unit": 1}   (FC16; "fc": 6 for FC6)
  {"write": "coil", "address": 3, "values": [true], "unit": 1}  (FC15; "fc": 5 for FC5)
      -> {"ok": true} or {"exception": 6}
  {"reads": N, ...read...}: N reads back to back -> {"all": [[...], ...]} or the first
      exception
Connection problems are answered as {"error": "..."}; the connection is opened once and
kept, as a monitoring tool would (and not reopened when the server closes it).
"""

import asyncio
import json
import sys

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException


async def read(client, req):
    kind, unit = req["read"], req.get("unit", 1)
    call = {"hr": client.read_holding_registers, "ir": client.read_input_registers,
            "coil": client.read_coils, "di": client.read_discrete_inputs}[kind]
    rr = await call(req["address"], count=req["count"], device_id=unit)
    if rr.isError():
        return {"exception": rr.exception_code}
    values = rr.registers if kind in ("hr", "ir") else rr.bits[:req["count"]]
    return {"values": list(values)}


async def write(client, req):
    kind, unit, values = req["write"], req.get("unit", 1), req["values"]
    fc = req.get("fc")
    if kind == "hr" and fc == 6:
        rr = await client.write_register(req["address"], values[0], device_id=unit)
    elif kind == "hr":
        rr = await client.write_registers(req["address"], values, device_id=unit)
    elif fc == 5:
        rr = await client.write_coil(req["address"], bool(values[0]), device_id=unit)
    else:
        rr = await client.write_coils(req["address"], [bool(v) for v in values],
                                      device_id=unit)
    if rr.isError():
        return {"exception": rr.exception_code}
    return {"ok": True}


async def answer(client, req):
    try:
        if "reads" in req:
            out = []
            for _ in range(req["reads"]):
                one = await read(client, req)
                if "values" not in one:
                    return one
                out.append(one["values"])
            return {"all": out}
        if "read" in req:
            return await read(client, req)
        return await write(client, req)
    except ModbusException as e:
        return {"error": str(e)}


async def main():
    # No reconnecting: a refused connection must stay refused, not come back.
    client = AsyncModbusTcpClient("127.0.0.1", port=int(sys.argv[1]), timeout=5,
                                  retries=0, reconnect_delay=0)
    if not await client.connect():
        print(json.dumps({"error": "cannot connect"}), flush=True)
        return
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        print(json.dumps(await answer(client, json.loads(line))), flush=True)
    client.close()


if __name__ == "__main__":
    asyncio.run(main())
