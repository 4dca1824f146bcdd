"""Service Bus trigger: a DICOM change event updates the study's FHIR resources."""

from __future__ import annotations

import azure.functions as func

from functions._edge import handle_message
from shared_code.services.study_events import handle_dicom_event

bp = func.Blueprint()


@bp.service_bus_queue_trigger(
    arg_name="msg", queue_name="dicom-events", connection="ServiceBusConnection"
)
def fhir_sync(msg: func.ServiceBusMessage) -> None:
    handle_message(
        msg,
        "dicom-events",
        lambda ctx, body: handle_dicom_event(
            body,
            settings=ctx.settings,
            archive_for=ctx.archive_for,
            fhir_for=ctx.fhir_for,
            state=ctx.state,
        ),
    )
