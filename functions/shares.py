"""HTTP: request a share and read its progress. Service Bus: carry the share out."""

from __future__ import annotations

import azure.functions as func

from functions._edge import handle_http, handle_message, request_json
from shared_code.domain.access import READ_STUDIES, WRITE_SHARES, Principal
from shared_code.errors import Quarantine
from shared_code.ports import JsonDict
from shared_code.services.sharing import request_share, share_status, transfer_share
from shared_code.wiring import Context

bp = func.Blueprint()


@bp.route(route="shares", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def create_share(req: func.HttpRequest) -> func.HttpResponse:
    def call(ctx: Context, principal: Principal) -> tuple[int, JsonDict]:
        principal.require(WRITE_SHARES)
        body = request_json(req)
        from_tenant = principal.tenant_for(str(body.get("from_tenant") or ""))
        share = request_share(
            settings=ctx.settings,
            state=ctx.state,
            bus=ctx.bus,
            archive_for=ctx.archive_for,
            principal_tenant=from_tenant,
            study_uid=str(body.get("study_uid") or ""),
            from_tenant=from_tenant,
            to_tenant=str(body.get("to_tenant") or ""),
        )
        return 202, share

    return handle_http(req, call)


@bp.route(
    route="shares/{share_id}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS
)
def get_share(req: func.HttpRequest) -> func.HttpResponse:
    def call(ctx: Context, principal: Principal) -> tuple[int, JsonDict]:
        principal.require(READ_STUDIES)
        tenant = principal.tenant_for(req.params.get("tenant"))
        return 200, share_status(
            req.route_params["share_id"],
            settings=ctx.settings,
            state=ctx.state,
            principal_tenant=tenant,
        )

    return handle_http(req, call)


@bp.service_bus_queue_trigger(
    arg_name="msg", queue_name="shares", connection="ServiceBusConnection"
)
def transfer(msg: func.ServiceBusMessage) -> None:
    handle_message(
        msg,
        "shares",
        lambda ctx, body: transfer_share(
            _share_id(body),
            settings=ctx.settings,
            state=ctx.state,
            archive_for=ctx.archive_for,
        ),
    )


def _share_id(body: object) -> str:
    if not isinstance(body, dict) or not isinstance(body.get("share_id"), str):
        raise Quarantine("malformed_message", 'the body must be {"share_id": str}')
    return str(body["share_id"])
