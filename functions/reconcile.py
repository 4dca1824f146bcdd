"""Timer trigger: walk each tenant's DICOM change feed and heal the FHIR mirror."""

from __future__ import annotations

import azure.functions as func

from shared_code.services.reconcile import reconcile_all
from shared_code.wiring import context

bp = func.Blueprint()

# Every five minutes: events keep FHIR current within seconds; this only heals.
SCHEDULE = "0 */5 * * * *"


@bp.timer_trigger(arg_name="timer", schedule=SCHEDULE, run_on_startup=False)
def reconcile(timer: func.TimerRequest) -> None:
    ctx = context()
    reconcile_all(
        list(ctx.settings.tenants.values()),
        archive_for=ctx.archive_for,
        fhir_for=ctx.fhir_for,
        state=ctx.state,
    )
