"""A native S2 Resource Manager built on s2-python 0.11.1, for the interop test.

It dials the gateway's server (ws://.../s2/rm/<id>) with s2-python's own
WebsocketClientMedium and S2AsyncConnection, offers PEBC and NOT_CONTROLABLE, and:
- on PEBC activation sends PEBC.PowerConstraints (0..3000 W upper, 0..0 W lower);
- answers a PEBC.Instruction with InstructionStatusUpdate SUCCEEDED;
- on SessionRequest TERMINATE acknowledges it and stops.

It prints one line per thing it saw (`SAW ...`) and exits by itself: 0 when it was
selected and told to terminate, 2 when the session ended otherwise, 3 on its own timeout.

Usage: s2python_rm.py URL RESOURCE_ID [TIMEOUT_S]
"""

import asyncio
import datetime
import logging
import sys
import uuid

from s2python.common import (
    Commodity,
    CommodityQuantity,
    Duration,
    InstructionStatus,
    InstructionStatusUpdate,
    NumberRange,
    Role,
    RoleType,
    SessionRequest,
    SessionRequestType,
)
from s2python.connection.asset_details import AssetDetails
from s2python.connection.async_.connection import S2AsyncConnection
from s2python.connection.async_.control_type.class_based import (
    NoControlControlType,
    PEBCControlType,
    ResourceManagerHandler,
)
from s2python.connection.async_.medium.websocket import WebsocketClientMedium
from s2python.pebc import (
    PEBCAllowedLimitRange,
    PEBCPowerConstraints,
    PEBCPowerEnvelopeConsequenceType,
    PEBCPowerEnvelopeLimitType,
)
from s2python.common import HandshakeResponse

QUANTITY = CommodityQuantity.ELECTRIC_POWER_3_PHASE_SYMMETRIC


def say(*parts: object) -> None:
    print("SAW", *parts, flush=True)


class State:
    selected = None
    terminated = False


class Pebc(PEBCControlType):
    def __init__(self, state: State) -> None:
        self.state = state

    async def activate(self, connection: S2AsyncConnection) -> None:
        self.state.selected = "POWER_ENVELOPE_BASED_CONTROL"
        say("selected POWER_ENVELOPE_BASED_CONTROL")
        constraints = PEBCPowerConstraints(
            message_id=uuid.uuid4(),
            id=uuid.uuid4(),
            valid_from=datetime.datetime.now(datetime.timezone.utc),
            valid_until=None,
            consequence_type=PEBCPowerEnvelopeConsequenceType.DEFER,
            allowed_limit_ranges=[
                PEBCAllowedLimitRange(
                    commodity_quantity=QUANTITY,
                    limit_type=PEBCPowerEnvelopeLimitType.UPPER_LIMIT,
                    range_boundary=NumberRange(start_of_range=0.0, end_of_range=3000.0),
                    abnormal_condition_only=False,
                ),
                PEBCAllowedLimitRange(
                    commodity_quantity=QUANTITY,
                    limit_type=PEBCPowerEnvelopeLimitType.LOWER_LIMIT,
                    range_boundary=NumberRange(start_of_range=0.0, end_of_range=0.0),
                    abnormal_condition_only=False,
                ),
            ],
        )
        say("constraints_sent", constraints.id)
        status = await connection.send_msg_and_await_reception_status(
            constraints, raise_on_error=False
        )
        say("reception_status", constraints.message_id, status.status.value)

    async def deactivate(self, connection: S2AsyncConnection) -> None:
        say("deactivated POWER_ENVELOPE_BASED_CONTROL")

    async def handle_instruction(self, connection, msg, send_okay) -> None:
        say("instruction", msg.id, msg.power_constraints_id)
        await send_okay()
        update = InstructionStatusUpdate(
            message_id=uuid.uuid4(),
            instruction_id=msg.id,
            status_type=InstructionStatus.SUCCEEDED,
            timestamp=datetime.datetime.now(datetime.timezone.utc),
        )
        status = await connection.send_msg_and_await_reception_status(
            update, raise_on_error=False
        )
        say("reception_status", update.message_id, status.status.value)


class NotControllable(NoControlControlType):
    def __init__(self, state: State) -> None:
        self.state = state

    async def activate(self, connection: S2AsyncConnection) -> None:
        self.state.selected = "NOT_CONTROLABLE"
        say("selected NOT_CONTROLABLE")

    async def deactivate(self, connection: S2AsyncConnection) -> None:
        say("deactivated NOT_CONTROLABLE")


async def main(url: str, resource_id: str, timeout_s: float) -> int:
    state = State()
    details = AssetDetails(
        resource_id=uuid.UUID(resource_id),
        provides_forecast=False,
        provides_power_measurements=[QUANTITY],
        instruction_processing_delay=Duration(1000),
        roles=[Role(role=RoleType.ENERGY_CONSUMER, commodity=Commodity.ELECTRICITY)],
        name="s2-python RM",
        manufacturer="s2-python",
        model="interop peer",
    )
    medium = WebsocketClientMedium(url=url, verify_certificate=False)
    await medium.connect()
    say("connected", url)
    connection = S2AsyncConnection(medium=medium)
    handler = ResourceManagerHandler(
        control_types=[Pebc(state), NotControllable(state)], asset_details=details
    )
    handler.register_handlers(connection)

    async def on_handshake_response(conn, msg, send_okay) -> None:
        say("handshake_response", msg.selected_protocol_version)
        # s2-python's own handler answers and sends ResourceManagerDetails.
        await ResourceManagerHandler._on_handshake_response(handler, conn, msg, send_okay)

    async def on_session_request(conn, msg, send_okay) -> None:
        say("session_request", msg.request.value)
        await send_okay()
        if msg.request == SessionRequestType.TERMINATE:
            state.terminated = True
            await conn.stop()

    connection.register_handler(HandshakeResponse, on_handshake_response)
    connection.register_handler(SessionRequest, on_session_request)
    try:
        await asyncio.wait_for(connection.run(), timeout=timeout_s)
    except asyncio.TimeoutError:
        say("timeout", timeout_s)
        return 3
    finally:
        await medium.disconnect()
    say("stopped selected=%s terminated=%s" % (state.selected, state.terminated))
    if state.selected is not None and state.terminated:
        return 0
    return 2


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    _url, _resource_id = sys.argv[1], sys.argv[2]
    _timeout = float(sys.argv[3]) if len(sys.argv) > 3 else 30.0
    sys.exit(asyncio.run(main(_url, _resource_id, _timeout)))
