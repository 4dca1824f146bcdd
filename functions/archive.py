"""Service Bus trigger: a staged instance is prepared for its tenant and archived."""

from __future__ import annotations

import azure.functions as func

from functions._edge import handle_message
from shared_code.services.archive import archive_instance

bp = func.Blueprint()


@bp.service_bus_queue_trigger(
    arg_name="msg", queue_name="instances", connection="ServiceBusConnection"
)
def archive(msg: func.ServiceBusMessage) -> None:
    handle_message(
        msg,
        "instances",
        lambda ctx, body: archive_instance(
            body,
            settings=ctx.settings,
            blobs=ctx.blobs,
            archive_for=ctx.archive_for,
            state=ctx.state,
        ),
        tenant_of=lambda body: str(body.get("tenant", "")),
    )
