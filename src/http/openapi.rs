//! `GET /api/openapi.json`: the OpenAPI 3 description of every route. A resource module's
//! handlers are listed in `ApiDoc`'s `paths`.
//!
//! Here too are what the resource modules share in their descriptions: the constraints the
//! server checks on values (`Id`, `Name`, `RoleName`, `DateTime`, named schemas the fields
//! refer to with `#[schema(value_type = ...)]`) and the error responses (`BadRequest`,
//! `Unauthorized`, ..., each the `ErrorBody` shape), so that the description states exactly what
//! the server accepts and answers. `tests/e2e/test_openapi.py` holds the server to it.

use std::borrow::Cow;

use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::openapi::{RefOr, ResponseBuilder, content::ContentBuilder};
use utoipa::{OpenApi, PartialSchema, ToResponse, ToSchema};

use super::{
    AppState, ErrorBody, ErrorCode, ErrorDetail, admin, appointments, calls, health, ice, tokens,
};

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/openapi.json", get(openapi_json))
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "callrelay",
        description = "Signaling, SFU and consult API.\n\n\
            Every error is `{\"error\":{\"code\",\"message\"}}` (`ErrorBody`) with its status. \
            A path answers a method it does not take with 405 (`method_not_allowed`, and an \
            `Allow` header listing the methods it takes); an unknown path under `/api` with 404. \
            Request bodies are JSON (`Content-Type: application/json`, at most \
            `limits.max_http_body_bytes`) and may hold only the properties described."
    ),
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
        admin::cluster_nodes,
    ),
    components(
        schemas(ErrorBody, ErrorDetail, ErrorCode),
        responses(BadRequest, Unauthorized, Forbidden, NotFound, TooLarge, Internal)
    ),
    modifiers(&BearerAuth)
)]
pub(crate) struct ApiDoc;

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

#[utoipa::path(get, path = "/api/openapi.json", responses(
    (status = 200, description = "This document (OpenAPI 3.1)", content_type = "application/json", body = Object)))]
async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

// ----------------------------------------------------------------------------------------------
// Values: what the server checks, as schemas.

/// An id (user, appointment): what `callrelay_signaling::protocol::check_id` accepts.
pub(super) struct Id;

impl PartialSchema for Id {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(
                "An id: 1 to 128 ASCII letters, digits and `-` `_` `.` `:`.",
            ))
            .min_length(Some(1))
            .max_length(Some(128))
            .pattern(Some("^[A-Za-z0-9._:-]+$"))
            .examples(["doc-1"])
            .into()
    }
}

impl ToSchema for Id {}

/// A display name: what `check_name` (and the token's issuer) accepts.
pub(super) struct Name;

impl PartialSchema for Name {
    fn schema() -> RefOr<Schema> {
        // No control character (Unicode Cc: U+0000-U+001F, U+007F-U+009F) anywhere, and at least
        // one character that is neither that nor white space (Rust's `char::is_whitespace`).
        const PATTERN: &str = concat!(
            r"^[^\u0000-\u001F\u007F-\u009F]*",
            r"[^\u0000-\u0020\u007F-\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]",
            r"[^\u0000-\u001F\u007F-\u009F]*$",
        );
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(
                "A display name: 1 to 200 characters, no control characters, not only white space.",
            ))
            .min_length(Some(1))
            .max_length(Some(200))
            .pattern(Some(PATTERN))
            .examples(["Dr Ada Lovelace"])
            .into()
    }
}

impl ToSchema for Name {}

/// A role, as tokens carry it.
pub(super) struct RoleName;

impl PartialSchema for RoleName {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(["patient", "doctor", "staff", "admin"]))
            .into()
    }
}

impl ToSchema for RoleName {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Role")
    }
}

/// A date-time the server takes: RFC 3339 (any offset), in the years 0001 to 9998, so that it
/// is a date-time in UTC too, which is how the server stores and shows it.
pub(super) struct DateTime;

impl PartialSchema for DateTime {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .description(Some(
                "An RFC 3339 date-time with an offset (`Z` or `±hh:mm`), in the years 0001 to 9998.",
            ))
            .pattern(Some("^(?!0000|9999)"))
            .examples(["2026-12-01T09:30:00Z"])
            .into()
    }
}

impl ToSchema for DateTime {}

// ----------------------------------------------------------------------------------------------
// Error responses: the shape `ApiError` renders, one reusable response per status.

/// An error response with `description`, its body an `ErrorBody`.
fn error_response(description: &str) -> RefOr<utoipa::openapi::Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(utoipa::openapi::Ref::from_schema_name(
                    ErrorBody::name(),
                )))
                .build(),
        )
        .into()
}

macro_rules! error_responses {
    ($($name:ident: $description:literal;)*) => {$(
        pub(super) struct $name;

        impl<'r> ToResponse<'r> for $name {
            fn response() -> (&'r str, RefOr<utoipa::openapi::Response>) {
                (stringify!($name), error_response($description))
            }
        }
    )*};
}

error_responses! {
    BadRequest: "The body or a parameter is not what the operation takes (`invalid_payload`).";
    Unauthorized: "No bearer token, or one that does not verify: a bad signature, `alg: none`, expired, an unknown role (`unauthorized`).";
    Forbidden: "The caller's role or relation to the resource does not allow this (`forbidden`).";
    NotFound: "No such resource (`not_found`).";
    TooLarge: "The body is larger than `limits.max_http_body_bytes` (`too_large`).";
    Internal: "The database failed (`internal`).";
}
