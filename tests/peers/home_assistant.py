"""A real Home Assistant Core for tests/e2e_homeassistant.rs, run from .venv-ha.

Starts `hass` with a private config directory (given), onboards it and adds the MQTT
integration for the given broker through its REST API (as a user would in the UI), then
answers one JSON command per stdin line with one JSON line on stdout:

- {"cmd": "entities"}: every MQTT entity: unique_id, entity_id, entity_category,
  device (name, manufacturer, model, sw_version, via_device name), state and attributes.
- {"cmd": "energy", "prefs": {...}}: saves the Energy dashboard's preferences, has the
  recorder compile the statistics of the current 5-minute period (which it would do by
  itself at the period's end: up to 5 minutes later), then answers Home Assistant's own
  validation of the preferences (energy/validate) and of the statistics
  (recorder/validate_statistics), both over the websocket API.
- {"cmd": "service", "domain": "switch", "service": "turn_off", "data": {...}}.

Usage: home_assistant.py CONFIG_DIR HTTP_PORT BROKER_PORT MQTT_USER MQTT_PASSWORD
"""

import asyncio
import ctypes
import json
import os
import signal
import subprocess
import sys

import aiohttp

CLIENT_ID = "http://127.0.0.1/"


def say(obj):
    print(json.dumps(obj), flush=True)


def step(text):
    """Progress, on stderr: the test log shows how far the setup got."""
    print(text, file=sys.stderr, flush=True)


# A test-only integration in the private config directory: one websocket command that
# runs the recorder's own statistics task for the current period now.
COMPILE_MANIFEST = {
    "domain": "s2gw_compile",
    "name": "s2gw test: compile statistics now",
    "version": "1.0.0",
    "dependencies": ["recorder", "websocket_api"],
    "documentation": "https://example.invalid",
    "codeowners": [],
    "requirements": [],
    "iot_class": "local_push",
}
COMPILE_INIT = """
import asyncio

import voluptuous as vol
from homeassistant.components import websocket_api
from homeassistant.components.recorder import get_instance
from homeassistant.components.recorder.tasks import StatisticsTask, SynchronizeTask
from homeassistant.util import dt as dt_util


async def async_setup(hass, config):
    websocket_api.async_register_command(hass, compile_now)
    return True


@websocket_api.websocket_command({vol.Required("type"): "s2gw_compile/now"})
@websocket_api.async_response
async def compile_now(hass, connection, msg):
    now = dt_util.utcnow()
    start = now.replace(minute=now.minute - now.minute % 5, second=0, microsecond=0)
    instance = get_instance(hass)
    # A period compiles once: the states so far must be written before.
    await hass.async_block_till_done()
    await instance.async_block_till_done()
    instance.queue_task(StatisticsTask(start, False))
    # Not instance.async_block_till_done(): it returns at once when the recorder thread
    # has already taken the task off its queue. The recorder runs its tasks in order, so
    # this one is done when the next one runs.
    done = asyncio.Event()
    instance.queue_task(SynchronizeTask(done))
    await done.wait()
    connection.send_result(msg["id"], {"start": start.isoformat()})
"""

CONFIG = """
homeassistant:
  name: s2gw test
  time_zone: UTC
  unit_system: metric
  currency: EUR
  country: NL
  latitude: 52.0
  longitude: 5.0
  elevation: 0
http:
  server_host: 127.0.0.1
  server_port: {port}
api:
config:
onboarding:
websocket_api:
recorder:
  # Every state in the database at once: the compile below reads it from there.
  commit_interval: 0
energy:
s2gw_compile:
logger:
  default: warning
"""


def die_with_parent():
    """PR_SET_PDEATHSIG: SIGKILL when the driver goes, however it goes."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


class Hass:
    def __init__(self, base, session):
        self.base = base
        self.session = session
        self.token = None
        self.ws = None
        self.ws_id = 0

    def headers(self):
        return {"Authorization": f"Bearer {self.token}"}

    async def post(self, path, body, auth=True):
        async with self.session.post(
            self.base + path, json=body, headers=self.headers() if auth else {}
        ) as r:
            text = await r.text()
            if r.status >= 300:
                raise RuntimeError(f"POST {path}: {r.status} {text}")
            return json.loads(text) if text else None

    async def get(self, path):
        async with self.session.get(self.base + path, headers=self.headers()) as r:
            if r.status >= 300:
                raise RuntimeError(f"GET {path}: {r.status} {await r.text()}")
            return await r.json()

    async def wait_up(self, proc):
        for _ in range(1200):
            if proc.poll() is not None:
                raise RuntimeError(f"hass exited with {proc.returncode}")
            try:
                async with self.session.get(self.base + "/api/onboarding") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            # Polling a port that is not open yet has no event to await.
            await asyncio.sleep(0.1)
        raise RuntimeError("Home Assistant did not start within 120 s")

    async def onboard(self):
        user = await self.post(
            "/api/onboarding/users",
            {
                "client_id": CLIENT_ID,
                "name": "Test",
                "username": "test",
                "password": "test-password",
                "language": "en",
            },
            auth=False,
        )
        async with self.session.post(
            self.base + "/auth/token",
            data={
                "grant_type": "authorization_code",
                "code": user["auth_code"],
                "client_id": CLIENT_ID,
            },
        ) as r:
            self.token = (await r.json())["access_token"]
        await self.post("/api/onboarding/core_config", {})
        await self.post("/api/onboarding/analytics", {})
        await self.post(
            "/api/onboarding/integration",
            {"client_id": CLIENT_ID, "redirect_uri": CLIENT_ID},
        )

    async def add_mqtt(self, port, user, password):
        flow = await self.post(
            "/api/config/config_entries/flow", {"handler": "mqtt", "show_advanced_options": True}
        )
        step = await self.post(
            f"/api/config/config_entries/flow/{flow['flow_id']}",
            {"broker": "127.0.0.1", "port": port, "username": user, "password": password},
        )
        if step.get("type") != "create_entry":
            raise RuntimeError(f"the MQTT flow did not finish: {step}")

    async def ws_connect(self):
        self.ws = await self.session.ws_connect(self.base + "/api/websocket")
        await self.ws.receive_json()  # auth_required
        await self.ws.send_json({"type": "auth", "access_token": self.token})
        ok = await self.ws.receive_json()
        if ok.get("type") != "auth_ok":
            raise RuntimeError(f"websocket auth: {ok}")

    async def call(self, kind, **body):
        self.ws_id += 1
        await self.ws.send_json({"id": self.ws_id, "type": kind, **body})
        while True:
            msg = await self.ws.receive_json()
            if msg.get("id") == self.ws_id and msg.get("type") == "result":
                if not msg.get("success"):
                    raise RuntimeError(f"{kind}: {msg}")
                return msg.get("result")

    async def entities(self):
        registry = await self.call("config/entity_registry/list")
        devices = {d["id"]: d for d in await self.call("config/device_registry/list")}
        states = {s["entity_id"]: s for s in await self.get("/api/states")}
        out = []
        for e in registry:
            if e.get("platform") != "mqtt":
                continue
            device = devices.get(e.get("device_id")) or {}
            via = devices.get(device.get("via_device_id")) or {}
            state = states.get(e["entity_id"]) or {}
            out.append(
                {
                    "unique_id": e["unique_id"],
                    "entity_id": e["entity_id"],
                    "entity_category": e.get("entity_category"),
                    "device": {
                        "name": device.get("name"),
                        "manufacturer": device.get("manufacturer"),
                        "model": device.get("model"),
                        "sw_version": device.get("sw_version"),
                        "via_device": via.get("name"),
                    },
                    "state": state.get("state"),
                    "attributes": state.get("attributes", {}),
                }
            )
        return out

    async def energy(self, prefs):
        await self.call("energy/save_prefs", **prefs)
        await self.call("s2gw_compile/now")
        return {
            "energy": await self.call("energy/validate"),
            "statistics": await self.call("recorder/validate_statistics"),
        }


async def main():
    config_dir, http_port, broker_port, user, password = sys.argv[1:6]
    with open(os.path.join(config_dir, "configuration.yaml"), "w") as f:
        f.write(CONFIG.format(port=http_port))
    component = os.path.join(config_dir, "custom_components", "s2gw_compile")
    os.makedirs(component, exist_ok=True)
    with open(os.path.join(component, "manifest.json"), "w") as f:
        json.dump(COMPILE_MANIFEST, f)
    with open(os.path.join(component, "__init__.py"), "w") as f:
        f.write(COMPILE_INIT)
    log = open(os.path.join(config_dir, "hass.log"), "w")
    # --skip-pip: everything is installed by scripts/ha-peer.sh; nothing from the network.
    # Home Assistant dies with this driver, which the test kills when it drops it: no
    # Home Assistant outlives its test.
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "homeassistant", "-c", config_dir, "--skip-pip"],
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=die_with_parent,
    )
    try:
        async with aiohttp.ClientSession() as session:
            hass = Hass(f"http://127.0.0.1:{http_port}", session)
            await hass.wait_up(proc)
            step("Home Assistant is up: onboarding")
            await hass.onboard()
            step("onboarded: adding the MQTT integration")
            await hass.add_mqtt(int(broker_port), user, password)
            step("MQTT added: connecting the websocket API")
            await hass.ws_connect()
            say({"event": "ready", "version": (await hass.get("/api/config"))["version"]})
            reader = asyncio.StreamReader()
            loop = asyncio.get_running_loop()
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
            while line := await reader.readline():
                request = json.loads(line)
                try:
                    if request["cmd"] == "entities":
                        say({"ok": await hass.entities()})
                    elif request["cmd"] == "energy":
                        say({"ok": await hass.energy(request["prefs"])})
                    elif request["cmd"] == "service":
                        path = f"/api/services/{request['domain']}/{request['service']}"
                        await hass.post(path, request.get("data", {}))
                        say({"ok": True})
                    else:
                        say({"error": f"unknown command {request['cmd']}"})
                except Exception as e:  # the test reads the answer, not a traceback
                    say({"error": repr(e)})
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


asyncio.run(main())
