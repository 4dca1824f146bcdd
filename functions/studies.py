"""HTTP: where a study stands, and a health check."""

from __future__ import annotations

import azure.functions as func

from functions._edge import handle_http, json_response
from shared_code.domain.access import READ_STUDIES, Principal
from shared_code.ports import JsonDict
from shared_code.services.study_status import study_status
from shared_code.wiring import Context

bp = func.Blueprint()


@bp.route(
    route="studies/{study_uid}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS
)
def get_study(req: func.HttpRequest) -> func.HttpResponse:
    def call(ctx: Context, principal: Principal) -> tuple[int, JsonDict]:
        principal.require(READ_STUDIES)
        tenant = principal.tenant_for(req.params.get("tenant"))
        return 200, study_status(
            req.route_params["study_uid"], tenant=tenant, state=ctx.state
        )

    return handle_http(req, call)


@bp.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    return json_response({"status": "ok"})
