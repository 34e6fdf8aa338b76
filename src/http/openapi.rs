//! `GET /api/openapi.json`: the OpenAPI 3 description of every route. A resource module's
//! handlers are listed in `ApiDoc`'s `paths`.

use axum::routing::get;
use axum::{Json, Router};
use utoipa::OpenApi;

use super::{AppState, admin, appointments, calls, health, ice, tokens};

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/openapi.json", get(openapi_json))
}

#[derive(OpenApi)]
#[openapi(
    info(title = "callrelay", description = "Signaling, SFU and consult API"),
    paths(
        health::livez,
        health::readyz,
        health::metrics,
        tokens::dev_token,
        tokens::me,
        appointments::create_appointment,
        appointments::list_appointments,
        appointments::get_appointment,
        appointments::confirm_appointment,
        appointments::cancel_appointment,
        appointments::appointment_messages,
        calls::list_calls,
        ice::ice_servers,
        admin::list_rooms,
        admin::list_calls,
        admin::remove_participant,
        admin::close_room,
        admin::end_call,
        admin::audit_trail,
    ),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

/// The `bearer` security scheme (`Authorization: Bearer <jwt>`) the paths refer to.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

#[utoipa::path(get, path = "/api/openapi.json", responses((status = 200, description = "This document")))]
async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
