//! The one URL map, and the request-level error handling every route shares.

use crate::api::{
    auth, cards, counters, guardians, inbox, meals, notifications, ops, order_reads, orders,
    readers, rosters, schools, screens, stations, transitions, users, waves,
};
use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;
use crate::{metrics, pages, ws};
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::error::{PathError, QueryPayloadError};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::{Condition, Logger, Next, from_fn};
use actix_web::{App, HttpRequest, web};
use tracing::Instrument;
use utoipa::OpenApi;
use utoipa_actix_web::{AppExt, scope};

#[derive(OpenApi)]
#[openapi(
    info(title = "Tiffin", description = "Real-time dispatch and notification hub for school kitchens"),
    components(schemas(crate::error::ErrorBody, crate::error::ErrorCode)),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
struct ApiDoc;

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

fn path_error(err: PathError, _: &HttpRequest) -> actix_web::Error {
    ApiError::new(ErrorCode::InvalidId, format!("invalid id in path: {err}")).into()
}

fn query_error(err: QueryPayloadError, _: &HttpRequest) -> actix_web::Error {
    ApiError::new(ErrorCode::InvalidQuery, format!("invalid query: {err}")).into()
}

/// No route took the request: `405` with `Allow` where the path is served with other
/// methods, else `404 route_not_found`.
async fn route_not_found(
    req: HttpRequest,
    allowed: web::Data<AllowedMethods>,
) -> actix_web::HttpResponse {
    use actix_web::ResponseError;
    let Some(methods) = allowed.on(req.path()) else {
        return ApiError::new(
            ErrorCode::RouteNotFound,
            format!("no route for {} {}", req.method(), req.path()),
        )
        .error_response();
    };
    let mut response = ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!(
            "{} is not served on {}; it takes {methods}",
            req.method(),
            req.path()
        ),
    )
    .error_response();
    if let Ok(value) = HeaderValue::from_str(&methods) {
        response
            .headers_mut()
            .insert(actix_web::http::header::ALLOW, value);
    }
    response
}

/// The methods each documented path takes, read from the OpenAPI document.
struct AllowedMethods(Vec<(Vec<String>, Vec<&'static str>)>);

impl AllowedMethods {
    fn of(doc: &utoipa::openapi::OpenApi) -> AllowedMethods {
        let routes = doc.paths.paths.iter().map(|(path, item)| {
            let segments = path.split('/').map(str::to_owned).collect();
            let methods = [
                ("GET", item.get.is_some()),
                ("POST", item.post.is_some()),
                ("PUT", item.put.is_some()),
                ("PATCH", item.patch.is_some()),
                ("DELETE", item.delete.is_some()),
            ];
            let methods = methods.into_iter().filter(|(_, has)| *has).map(|(m, _)| m);
            (segments, methods.collect())
        });
        AllowedMethods(routes.collect())
    }

    /// Every method some route takes on `path` (`{param}` matches one segment), or `None`.
    fn on(&self, path: &str) -> Option<String> {
        let segments: Vec<&str> = path.split('/').collect();
        let mut methods: Vec<&str> = Vec::new();
        for (pattern, taken) in &self.0 {
            let matches = pattern.len() == segments.len()
                && pattern.iter().zip(&segments).all(|(p, s)| {
                    p == s || (p.starts_with('{') && p.ends_with('}') && !s.is_empty())
                });
            for method in taken.iter().filter(|_| matches) {
                if !methods.contains(method) {
                    methods.push(method);
                }
            }
        }
        (!methods.is_empty()).then(|| methods.join(", "))
    }
}

/// The request middleware, in one layer (each `from_fn` layer boxes two futures a request):
/// tags each request with an id (the caller's `X-Request-Id` if it is sane, else a new one),
/// in the response header, the access log and every log line the request makes; then the
/// request metrics (`metrics::track`) around the per-address limit (`limit_by_ip`) and the
/// route.
async fn request_id(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = req
        .headers()
        .get(REQUEST_ID)
        .filter(|v| sane_request_id(v.as_bytes()))
        .cloned()
        .unwrap_or_else(fresh_request_id);
    let span = tracing::info_span!("request", request_id = id.to_str().unwrap_or_default());
    let routed = metrics::track(req, |req| async move {
        // A refusal is answered here, so that it too carries the id and is counted.
        if let Err(refused) = limit_by_ip(&req).await {
            return Ok(req.error_response(refused).map_into_right_body());
        }
        next.call(req)
            .await
            .map(ServiceResponse::map_into_left_body)
    });
    let mut response = routed.instrument(span).await?;
    response.headers_mut().insert(REQUEST_ID, id);
    Ok(response)
}

fn sane_request_id(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
}

/// 32 hex digits: this process's random prefix and a counter, unique across nodes and
/// restarts without a call for randomness (a syscall) per request.
fn fresh_request_id() -> HeaderValue {
    static PREFIX: std::sync::LazyLock<u64> = std::sync::LazyLock::new(rand::random);
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut text = [0u8; 32];
    for (i, digit) in text.iter_mut().enumerate() {
        let word = if i < 16 { *PREFIX } else { n };
        let nibble = (word >> (4 * (15 - i % 16))) & 0xf;
        *digit = b"0123456789abcdef"[nibble as usize];
    }
    HeaderValue::from_bytes(&text).unwrap_or(HeaderValue::from_static("0"))
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Every API request draws from its client address's bucket (`429 rate_limited` when empty).
async fn limit_by_ip(req: &ServiceRequest) -> Result<(), actix_web::Error> {
    if req.path().starts_with("/api/")
        && let Some(state) = req.app_data::<web::Data<AppState>>()
        && state.limits.is_on(crate::limits::Bucket::Ip)
        && let Some(client) = state.limits.client_address(req.request())
    {
        state
            .limits
            .check(crate::limits::Bucket::Ip, &client)
            .await?;
    }
    Ok(())
}

/// Operations a client calls without a bearer token (pages, probes, sign-in, the socket
/// with its token in the query, readers with their signatures).
const WITHOUT_BEARER: [&str; 14] = [
    "/",
    "/healthz",
    "/readyz",
    "/metrics",
    "/board/",
    "/dashboard/",
    "/expo/",
    "/station/",
    "/pages/",
    "/screens/pair",
    "/api/v1/auth/",
    "/api/v1/ws",
    "/api/v1/reader/",
    "/api/v1/openapi.json",
];

/// Every operation may be refused: the error body and its codes are the same everywhere
/// (`4XX`), a database away is `503`; public operations need no bearer token.
fn document_refusals(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
    let error = |description: &str| {
        RefOr::T(
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build(),
        )
    };
    for (path, item) in doc.paths.paths.iter_mut() {
        let public = WITHOUT_BEARER.iter().any(|p| {
            if p.ends_with('/') && *p != "/" {
                path.starts_with(p)
            } else {
                path == p
            }
        });
        for operation in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            let responses = &mut operation.responses.responses;
            responses.entry("4XX".into()).or_insert_with(|| {
                error("refused: see the error code (bad input, authentication, permission, not found, conflict, rate limit)")
            });
            responses
                .entry("503".into())
                .or_insert_with(|| error("the database is unavailable: retry after Retry-After"));
            if public {
                operation.security = Some(Vec::new());
            }
        }
    }
}

/// Takes the paths under its prefix, for a group of routes: `scope("").guard(Under(prefix))`
/// with the routes' paths written in full. actix tries the entries of a map in turn, each
/// route's pattern a regex: a group is one cheap look at the path, so a request tries only its
/// own group's patterns (all ~70 before, BENCHMARKS.md "HTTP path"). A new route goes in the
/// group of its path: a group claims every path under its prefix, so a route beside it with
/// such a path is never reached (the security matrix would find it refused as not found). A
/// path no route of its group takes is answered by `route_not_found` like any other.
struct Under(&'static str);

impl actix_web::guard::Guard for Under {
    fn check(&self, ctx: &actix_web::guard::GuardContext<'_>) -> bool {
        ctx.head()
            .uri
            .path()
            .strip_prefix(self.0)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }
}

/// Every route of the hub, registered once for actix and for the OpenAPI document.
pub fn build(
    state: web::Data<AppState>,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let limit = state.config.max_body_bytes;
    let (app, doc) = App::new()
        .into_utoipa_app()
        .openapi(ApiDoc::openapi())
        .app_data(state)
        .app_data(web::PayloadConfig::default().limit(limit))
        .app_data(web::PathConfig::default().error_handler(path_error))
        .app_data(web::QueryConfig::default().error_handler(query_error))
        // The API first: every API request would otherwise try the pages' patterns too.
        .service(
            scope("/api/v1")
                .service(
                    scope("")
                        .guard(Under("/api/v1/schools"))
                        .service(orders::create_order)
                        .service(order_reads::live_orders)
                        .service(order_reads::kitchen_summary)
                        .service(schools::create_school)
                        .service(schools::list_schools)
                        .service(schools::get_school)
                        .service(schools::update_school)
                        .service(counters::create_counter)
                        .service(counters::list_counters)
                        .service(counters::update_counter)
                        .service(users::create_user)
                        .service(users::list_users)
                        .service(users::update_user)
                        .service(guardians::create_guardian_link)
                        .service(guardians::delete_guardian_link)
                        .service(guardians::list_guardians)
                        .service(meals::create_meal)
                        .service(meals::list_meals)
                        .service(meals::update_meal)
                        .service(stations::create_station)
                        .service(stations::list_stations)
                        .service(screens::pair_screen)
                        .service(screens::list_screens)
                        .service(screens::revoke_screen)
                        .service(waves::create_service_window)
                        .service(waves::list_service_windows)
                        .service(readers::register_reader)
                        .service(readers::list_readers)
                        .service(readers::rotate_reader_key)
                        .service(cards::register_card)
                        .service(cards::list_cards)
                        .service(readers::list_scans)
                        .service(readers::request_code),
                )
                .service(
                    scope("")
                        .guard(Under("/api/v1/orders"))
                        .service(order_reads::get_order)
                        .service(transitions::confirm_order)
                        .service(transitions::start_order)
                        .service(transitions::ready_order)
                        .service(transitions::pickup_order)
                        .service(transitions::cancel_order)
                        .service(transitions::recall_order)
                        .service(transitions::bump_order)
                        .service(stations::mark_item_done)
                        .service(order_reads::order_notifications),
                )
                .service(
                    scope("")
                        .guard(Under("/api/v1/reader"))
                        .service(readers::post_scan)
                        .service(readers::post_scan_batch)
                        .service(readers::heartbeat),
                )
                .service(
                    scope("")
                        .guard(Under("/api/v1/cards"))
                        .service(cards::block_card)
                        .service(cards::unblock_card)
                        .service(cards::report_card_lost)
                        .service(cards::replace_card),
                )
                .service(
                    scope("")
                        .guard(Under("/api/v1/pickup-codes"))
                        .service(readers::verify_code),
                )
                .service(
                    scope("")
                        .guard(Under("/api/v1/me"))
                        .service(auth::me)
                        .service(inbox::list_inbox)
                        .service(inbox::mark_inbox_read)
                        .service(inbox::delete_inbox_message)
                        .service(notifications::register_device)
                        .service(notifications::list_devices)
                        .service(notifications::remove_device)
                        .service(notifications::get_preferences)
                        .service(notifications::set_preferences),
                )
                .service(
                    scope("")
                        .guard(Under("/api/v1/auth"))
                        .service(auth::login)
                        .service(auth::request_code)
                        .service(auth::verify_code)
                        .service(auth::refresh)
                        .service(auth::logout)
                        .service(screens::start_pairing)
                        .service(screens::claim_pairing)
                        .service(screens::refresh_screen),
                )
                .service(
                    scope("")
                        .guard(Under("/api/v1/admin"))
                        .service(rosters::import_roster)
                        .service(notifications::list_dead_letters)
                        .service(notifications::requeue_dead_letter),
                )
                .service(ws::connect)
                .service(ops::openapi),
        )
        .service(ops::healthz)
        .service(ops::readyz)
        .service(ops::metrics)
        .service(pages::index)
        .service(pages::dashboard)
        .service(pages::board)
        .service(pages::expo)
        .service(pages::station)
        .service(pages::script)
        .service(pages::pair)
        .split_for_parts();
    let mut doc = doc;
    document_refusals(&mut doc);
    let allowed = AllowedMethods::of(&doc);
    app.app_data(web::Data::new(doc))
        .app_data(web::Data::new(allowed))
        .default_service(web::to(route_not_found))
        .wrap(from_fn(request_id))
        // The path without its query: WebSocket access tokens travel in the query string.
        // Only when written: the logger renders its fields (the client's address among them)
        // for every request, whatever the log level.
        .wrap(Condition::new(
            tracing::enabled!(target: "actix_web::middleware::logger", tracing::Level::INFO),
            Logger::new("%a %{method}xi %U %s %b %Dms request_id=%{x-request-id}o")
                .custom_request_replace("method", |req| req.method().to_string())
                .exclude("/healthz"),
        ))
}
