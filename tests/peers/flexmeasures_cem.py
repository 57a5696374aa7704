"""FlexMeasures' own S2 CEM (flexmeasures-client 0.9.6, extra `s2`), as a test peer.

It runs the package's `flexmeasures_client/s2/script/websockets_server.py` unchanged:
that module is imported from the installed package and its aiohttp app, its
websocket handler, `CEM` and `FRBCSimple` do all the S2 work. An RM dials

    ws://127.0.0.1:PORT/ws          (the only route the module registers)

Usage: flexmeasures_cem.py [--port N] [--schedule W*STEPS,...]
    --port 0 (the default) picks a free port.

Output on stdout, one JSON object a line, flushed per line:
    {"event":"listening","port":N}                   once, when the WebSocket server is up
    {"event":"recv","message":{...}}                 each S2 message the CEM received
    {"event":"sent","message":{...}}                 each S2 message the CEM sent
    {"event":"api","method":M,"path":P,"query":{..},"status":S[,"body":{..}]}
                                                     each request to the FlexMeasures stand-in
    {"event":"error","detail":"..."}                 an exception or a refusal in the CEM:
        - a ReceptionStatus it sent with a status other than OK (INVALID_DATA carries
          s2-python's validation error in diagnostic_label; TEMPORARY_ERROR is what it
          answers to a message type no active handler takes);
        - an exception in its handler or in one of its background tasks;
        - a logged error, or a line it print()ed (FRBCSimple prints, to stdout, when it
          cannot schedule for lack of an FRBC.StorageStatus);
        - a stand-in request this file does not answer (404).
    {"event":"warning","detail":"..."}               a logged warning (e.g. "RM does not
                                                     support FILL_RATE_BASED_CONTROL")
A message that is not JSON comes as {"event":"recv","message":null,"raw":"..."}.
The package's own logging goes to stderr (LOGGING_LEVEL=DEBUG shows it all).

It exits 0 on SIGTERM, SIGINT or when stdin reaches end of file (a stdin that is
/dev/null is not watched: it is at end of file from the start). Open WebSocket
connections are closed with 1001 first.

What is set from outside, and why (nothing else is changed):
 1. aiohttp.web.run_app is swapped, for the import only, for a function that keeps the
    app: the module calls run_app(app) at import and would bind 0.0.0.0:8080. This
    file serves that same app on 127.0.0.1:--port instead.
 2. The module's FRBCSimple name is bound to a subclass whose valid_from_shift defaults
    to 0 instead of 1 day: otherwise every schedule, and so every FRBC.Instruction's
    execution_time, starts a day after the FRBC.SystemDescription's valid_from.
 3. FLEXMEASURES_BASE_URL points at the stand-in (http://127.0.0.1:<free port>); the
    module reads it per connection. FLEXMEASURES_USER / FLEXMEASURES_PASSWORD are left
    to their defaults (toy-user@flexmeasures.io / toy-password); the stand-in accepts any.
 4. aiohttp.web.WebSocketResponse is bound to a subclass that only reports what goes
    through receive() and send_str() (send_json ends there), to print recv/sent.
 5. sys.stdout is a catcher while the CEM runs, so that FRBCSimple's print() cannot
    break the JSON lines; this file writes to the real stdout.
The sensor ids come from the stand-in's answers, not from patching: price 1, power 2,
state of charge 3, RM discharge 4, on site asset 1 ("My CEM"). The CEM posts
PowerMeasurement values for ELECTRIC.POWER.L1 only, to a sensor id hard-coded as 357
in the package (it ignores other commodity quantities with a warning); the stand-in
takes those posts too. Not settable without editing the package, so left alone:
the 1 s poll before SelectControlType, and the one schedule request per received
FRBC.SystemDescription (there is no periodic re-planning).

The FlexMeasures stand-in (127.0.0.1, a free port) answers, all JSON:
  POST  /api/requestAuthToken                    200 {"auth_token":"stand-in-token"}
  GET   /api/v3_0/users                          200 [{"id":1,"email":<the email the
                                                      token was asked for>,"account_id":1}]
  GET   /api/v3_0/accounts/1                     200 {"id":1,"name":"stand-in account"}
  GET   /api/v3_0/assets?...                     200 [the site asset "My CEM", id 1,
                                                      with its four sensors listed]
  PATCH /api/v3_0/assets/1                       200 the site asset with the patch applied
  POST  /api/v3_0/sensors/{1,2,3,4,357}/data     200 {"status":"PROCESSED","message":...}
  GET   /api/v3_0/sensors/{1,2,3,4}              200 that sensor (power's generic_asset_id 1)
  POST  /api/v3_0/assets/1/schedules/trigger     200 {"schedule":<uuid>,"status":"PROCESSED"}
  GET   /api/v3_0/sensors/2/schedules/<uuid>     200 {"start":<the trigger's start>,
                                                      "duration":<the trigger's duration>,
                                                      "unit":"W","values":[...]}
  anything else                                  404 {"message":"not in the stand-in"}
The schedule has one value per 15 minutes (the package reads it at a fixed 15-minute
step) over the requested duration (PT12H, so 48): by default 4000 W for 4 steps,
-1500 W for 4 steps, then 0 W; --schedule "4000*4,-1500*4" says the same. FRBCSimple
turns each change of value into one FRBC.Instruction, execution_time start + 15 min
times the step, so the default gives three instructions, at start, +1 h and +2 h. The
values are in W because the package compares them, unconverted, with the S2 power
ranges (W); a real FlexMeasures would answer in the power sensor's unit (kW). No
FlexMeasures-Version header is sent, so the client neither polls /jobs nor asks for
/api/ versions: it fetches the schedule straight after the trigger.

What the CEM does that a test must allow for (package behaviour, seen with this file):
 - it sends no Handshake of its own: it answers the RM's with ReceptionStatus OK and a
   HandshakeResponse naming the highest version the RM offered that is >= 0.0.2-beta
   (so "1.0.0" if offered); a version that is not SemVer ("1.0") gets INVALID_DATA;
 - SelectControlType(FILL_RATE_BASED_CONTROL) comes 0-1 s after ResourceManagerDetails;
   FRBC messages are taken only after the RM's ReceptionStatus OK for it (before that:
   TEMPORARY_ERROR);
 - a schedule is asked for only when an FRBC.SystemDescription arrives, and only if an
   FRBC.StorageStatus came before it (else it prints, and no instruction ever follows);
   the instructions follow within tens of milliseconds, all at once;
 - a descending PowerRange (start_of_range > end_of_range) gets INVALID_DATA with
   s2-python's validation error; a descending fill_rate NumberRange is accepted but
   makes the operation_mode_factor wrong (clamped to 1).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import os
import signal
import stat
import sys
import threading
import traceback
import uuid
import weakref
from datetime import timedelta

import pandas as pd  # a dependency of the package; parses the ISO 8601 durations it sends
from aiohttp import WSMsgType, web

REAL_STDOUT = sys.stdout
SITE_ASSET_ID = 1
ACCOUNT_ID = 1
# name -> id; the names are the ones websockets_server.configure_site looks for.
SENSORS = {"price": 1, "power": 2, "state of charge": 3, "RM discharge": 4}
SENSOR_UNITS = {"price": "EUR/kWh", "power": "kW", "state of charge": "kWh",
                "RM discharge": "dimensionless"}
# CEM.handle_power_measurement posts ELECTRIC.POWER.L1 to this id, hard-coded.
L1_POWER_SENSOR_ID = 357
STEP = timedelta(minutes=15)
DEFAULT_SCHEDULE = "4000*4,-1500*4"


def emit(event: dict) -> None:
    try:
        REAL_STDOUT.write(json.dumps(event) + "\n")
        REAL_STDOUT.flush()
    except (BrokenPipeError, ValueError):
        pass  # the reader went away; shutting down is its business


def error(detail: str) -> None:
    emit({"event": "error", "detail": detail})


class PrintCatcher(io.TextIOBase):
    """Stands in for sys.stdout: whatever the package print()s becomes an error event."""

    def __init__(self) -> None:
        self._buf = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._buf += text
        while "\n" in self._buf:
            line, self._buf = self._buf.split("\n", 1)
            if line.strip():
                error(f"CEM printed: {line}")
                print(f"[flexmeasures_cem] CEM printed: {line}", file=sys.stderr)
        return len(text)


class EventLogHandler(logging.Handler):
    """Turns the package's (and aiohttp's) warnings and errors into events."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "asyncio":
            return  # reported by the loop's exception handler, once
        detail = f"{record.name}: {record.getMessage()}"
        if record.exc_info and record.exc_info[1] is not None:
            detail += f": {record.exc_info[1]!r}"
        if record.levelno >= logging.ERROR:
            error(detail)
        else:
            emit({"event": "warning", "detail": detail})


def loop_exception_handler(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    # Failures of the CEM's background tasks (trigger_schedule, send_storage_status, ...)
    # surface only here, when the failed task is collected.
    message = context.get("message", "")
    exc = context.get("exception")
    detail = f"{message}: {exc!r}" if exc is not None else message
    if message.startswith(("Unclosed client session", "Unclosed connector")):
        # The module never closes its per-connection FlexMeasuresClient: a leak, not a
        # refusal.
        emit({"event": "warning", "detail": detail})
    else:
        error(detail)
    loop.default_exception_handler(context)


class ObservedWebSocket(web.WebSocketResponse):
    """The module's WebSocketResponse, reporting each text frame in and out."""

    open_sockets: "weakref.WeakSet[ObservedWebSocket]" = weakref.WeakSet()

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._received_types: dict[str, str] = {}  # message_id -> message_type
        ObservedWebSocket.open_sockets.add(self)

    async def receive(self, timeout: float | None = None):
        msg = await super().receive(timeout)
        if msg.type == WSMsgType.TEXT:
            try:
                message = json.loads(msg.data)
            except ValueError:
                emit({"event": "recv", "message": None, "raw": msg.data})
            else:
                if isinstance(message, dict) and "message_id" in message:
                    self._received_types[str(message["message_id"])] = str(
                        message.get("message_type")
                    )
                emit({"event": "recv", "message": message})
        return msg

    async def send_str(self, data: str, compress: int | None = None) -> None:
        # Reported before it goes out, so a peer's quick answer cannot print first.
        try:
            message = json.loads(data)
        except ValueError:
            emit({"event": "sent", "message": None, "raw": data})
        else:
            emit({"event": "sent", "message": message})
            self._report_refusal(message)
        await super().send_str(data, compress)

    def _report_refusal(self, message: dict) -> None:
        if message.get("message_type") != "ReceptionStatus" or message.get("status") == "OK":
            return
        subject = str(message.get("subject_message_id"))
        subject_type = self._received_types.get(subject, "unknown message")
        label = message.get("diagnostic_label") or "(no diagnostic_label)"
        error(f"CEM answered {message.get('status')} to {subject_type} {subject}: {label}")


def parse_schedule(text: str) -> list[float]:
    values: list[float] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        watts, _, steps = part.partition("*")
        values += [float(watts)] * int(steps or 1)
    return values


class FlexMeasuresStandIn:
    """Answers the few FlexMeasures API calls the CEM makes; see the module docstring."""

    def __init__(self, schedule: list[float]) -> None:
        self.schedule = schedule
        self.email = "toy-user@flexmeasures.io"
        self.jobs: dict[str, dict] = {}  # schedule id -> trigger body
        self.site = {
            "id": SITE_ASSET_ID,
            "name": "My CEM",
            "account_id": ACCOUNT_ID,
            "latitude": 0,
            "longitude": 0,
            "generic_asset_type_id": 6,
            "attributes": "{}",
            "flex_context": "{}",
            "flex_model": "{}",
            "sensors_to_show": "[]",
            "sensors": [self.sensor(name) for name in SENSORS],
        }

    @staticmethod
    def sensor(name: str) -> dict:
        return {
            "id": SENSORS[name],
            "name": name,
            "unit": SENSOR_UNITS[name],
            "event_resolution": "PT0M" if name == "state of charge" else "PT15M",
            "generic_asset_id": SITE_ASSET_ID,
            "timezone": "Europe/Amsterdam",
            "attributes": "{}",
        }

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.report])
        app.add_routes([
            web.post("/api/requestAuthToken", self.auth_token),
            web.get("/api/v3_0/users", self.users),
            web.get(f"/api/v3_0/accounts/{ACCOUNT_ID}", self.account),
            web.get("/api/v3_0/assets", self.assets),
            web.patch(f"/api/v3_0/assets/{SITE_ASSET_ID}", self.patch_site),
            web.post(r"/api/v3_0/sensors/{id:\d+}/data", self.post_data),
            web.get(r"/api/v3_0/sensors/{id:\d+}", self.get_sensor),
            web.post(f"/api/v3_0/assets/{SITE_ASSET_ID}/schedules/trigger", self.trigger),
            web.get(f"/api/v3_0/sensors/{SENSORS['power']}/schedules/{{job}}",
                    self.get_schedule),
        ])
        return app

    @web.middleware
    async def report(self, request: web.Request, handler):
        body = None
        if request.can_read_body:
            try:
                body = await request.json()
            except ValueError:
                body = await request.text()
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            # Unknown routes and ids: JSON, so the client raises with our message.
            response = web.json_response({"message": "not in the stand-in"},
                                         status=exc.status)
        event = {"event": "api", "method": request.method, "path": request.path,
                 "query": dict(request.query), "status": response.status}
        if body is not None:
            event["body"] = body
        emit(event)
        if response.status >= 400:
            error(f"stand-in answered {response.status} to {request.method} {request.path_qs}")
        return response

    async def auth_token(self, request: web.Request) -> web.Response:
        self.email = (await request.json()).get("email", self.email)
        return web.json_response({"auth_token": "stand-in-token"})

    async def users(self, request: web.Request) -> web.Response:
        return web.json_response([{"id": 1, "email": self.email, "account_id": ACCOUNT_ID}])

    async def account(self, request: web.Request) -> web.Response:
        return web.json_response({"id": ACCOUNT_ID, "name": "stand-in account"})

    async def assets(self, request: web.Request) -> web.Response:
        return web.json_response([self.site])

    async def patch_site(self, request: web.Request) -> web.Response:
        patch = await request.json()
        self.site.update({k: v for k, v in patch.items() if k not in ("id", "sensors")})
        return web.json_response(self.site)

    async def post_data(self, request: web.Request) -> web.Response:
        if int(request.match_info["id"]) not in (*SENSORS.values(), L1_POWER_SENSOR_ID):
            raise web.HTTPNotFound()
        return web.json_response({"status": "PROCESSED",
                                  "message": "Request has been processed."})

    async def get_sensor(self, request: web.Request) -> web.Response:
        wanted = int(request.match_info["id"])
        for name, sensor_id in SENSORS.items():
            if sensor_id == wanted:
                return web.json_response(self.sensor(name))
        raise web.HTTPNotFound()

    async def trigger(self, request: web.Request) -> web.Response:
        job = str(uuid.uuid4())
        self.jobs[job] = await request.json()
        return web.json_response({"schedule": job, "status": "PROCESSED",
                                  "message": "Request has been processed."})

    async def get_schedule(self, request: web.Request) -> web.Response:
        trigger = self.jobs.get(request.match_info["job"])
        if trigger is None:
            raise web.HTTPNotFound()
        steps = int(pd.Timedelta(trigger["duration"]) / STEP)
        values = (self.schedule + [0.0] * steps)[:steps]
        return web.json_response({"start": trigger["start"], "duration": trigger["duration"],
                                  "unit": "W", "values": values})


def import_cem_module(captured: list):
    """Imports the package's websockets_server with run_app held back; see (1), (4)."""
    real_run_app = web.run_app
    web.run_app = lambda app, *a, **kw: captured.append(app)
    web.WebSocketResponse = ObservedWebSocket
    try:
        from flexmeasures_client.s2.script import websockets_server
    finally:
        web.run_app = real_run_app
    if not captured:
        raise RuntimeError("websockets_server did not hand its app to run_app")
    return websockets_server


def start_schedules_now(module) -> None:
    """(2): the same FRBCSimple, with valid_from_shift 0 unless the caller says otherwise."""
    base = module.FRBCSimple

    class FRBCSimpleNow(base):
        def __init__(self, *args, **kwargs) -> None:
            kwargs.setdefault("valid_from_shift", timedelta(0))
            super().__init__(*args, **kwargs)

    FRBCSimpleNow.__name__ = FRBCSimpleNow.__qualname__ = "FRBCSimple"
    module.FRBCSimple = FRBCSimpleNow


def watch_stdin(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    try:
        fd = sys.stdin.fileno()
        st = os.fstat(fd)
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == os.stat(os.devnull).st_rdev:
            return  # /dev/null: at end of file from the start, so not a signal to stop
    except (OSError, ValueError, AttributeError):
        return  # no usable stdin at all

    def read_to_eof() -> None:
        # os.read, not sys.stdin: a daemon thread blocked inside a buffered reader
        # holds its lock and aborts the interpreter's shutdown.
        try:
            while os.read(fd, 65536):
                pass
        except OSError:
            pass
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=read_to_eof, name="stdin-eof", daemon=True).start()


async def serve(port: int, schedule: list[float]) -> int:
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(loop_exception_handler)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watch_stdin(loop, stop)

    # The stand-in first: the CEM calls it as soon as an RM connects.
    api_runner = web.AppRunner(FlexMeasuresStandIn(schedule).app(), access_log=None,
                               shutdown_timeout=1.0)
    await api_runner.setup()
    api_site = web.TCPSite(api_runner, "127.0.0.1", 0)
    await api_site.start()
    api_port = api_site._server.sockets[0].getsockname()[1]
    os.environ["FLEXMEASURES_BASE_URL"] = f"http://127.0.0.1:{api_port}"  # (3)
    print(f"[flexmeasures_cem] FlexMeasures stand-in at http://127.0.0.1:{api_port}",
          file=sys.stderr)

    captured: list = []
    module = import_cem_module(captured)
    start_schedules_now(module)
    logging.getLogger().addHandler(EventLogHandler(level=logging.WARNING))

    # A short shutdown_timeout: the module's handler never returns by itself (its
    # producer waits on the CEM's queue forever), so cleanup would wait the 60 s default.
    ws_runner = web.AppRunner(captured[0], access_log=None, shutdown_timeout=1.0)
    await ws_runner.setup()
    ws_site = web.TCPSite(ws_runner, "127.0.0.1", port)
    await ws_site.start()
    emit({"event": "listening", "port": ws_site._server.sockets[0].getsockname()[1]})

    await stop.wait()
    for ws in list(ObservedWebSocket.open_sockets):
        if not ws.closed:
            await ws.close(code=1001, message=b"CEM stopping")
    await ws_runner.cleanup()
    await api_runner.cleanup()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, default=0,
                        help="WebSocket port on 127.0.0.1; 0 picks a free one")
    parser.add_argument("--schedule", default=DEFAULT_SCHEDULE,
                        help="stand-in schedule as W*STEPS,... per 15 min; then 0 W "
                             f"(default {DEFAULT_SCHEDULE})")
    args = parser.parse_args()
    schedule = parse_schedule(args.schedule)
    sys.stdout = PrintCatcher()  # (5)
    try:
        return asyncio.run(serve(args.port, schedule))
    except Exception as exc:  # noqa: BLE001 - report, then fail
        error(f"wrapper failed: {exc!r}")
        traceback.print_exc()
        return 1
    finally:
        sys.stdout = REAL_STDOUT


if __name__ == "__main__":
    sys.exit(main())
