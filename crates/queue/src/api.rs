//! The `/v1` routes: authentication, rate limits, body parsing, and the handlers that call
//! [`crate::model`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::approvals::ApprovalWriter;
use crate::db::Db;
use crate::error::ApiError;
use crate::model::{self, Member, QueueRules, RequestView, Role};

/// Requests bodies larger than this are refused.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// Per-API-key rate limit: a token bucket.
#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: f64,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self { per_second: 50.0, burst: 100.0 }
    }
}

#[derive(Debug, Default)]
struct Buckets(Mutex<HashMap<String, (f64, Instant)>>);

impl Buckets {
    /// Takes one token from `key`'s bucket, or says how many seconds until one is there.
    fn take(&self, key: &str, limit: RateLimit) -> Result<(), u64> {
        let Ok(mut buckets) = self.0.lock() else {
            return Ok(());
        };
        let now = Instant::now();
        if buckets.len() > 100_000 {
            // Keys nobody used for a minute start full again; bounded memory for callers who
            // send endless made-up keys.
            buckets.retain(|_, (_, last)| {
                now.duration_since(*last) < std::time::Duration::from_secs(60)
            });
        }
        let (tokens, last) = buckets.entry(key.to_owned()).or_insert((limit.burst, now));
        *tokens =
            (*tokens + now.duration_since(*last).as_secs_f64() * limit.per_second).min(limit.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / limit.per_second).ceil().max(1.0) as u64)
        }
    }
}

/// A session as looked up: its member, its API key's hash, its expiry.
type CachedSession = (Member, String, i64);

/// Everything a handler needs.
#[derive(Clone)]
#[expect(missing_debug_implementations, reason = "holds a pool and buckets; nothing to show")]
pub struct ApiState {
    pub db: Db,
    pub rules: Arc<QueueRules>,
    pub limit: RateLimit,
    buckets: Arc<Buckets>,
    /// Requests answered with 429, for operators and tests.
    pub rate_limited: Arc<std::sync::atomic::AtomicU64>,
    /// Sessions seen, by token hash, until they expire: members and keys are never removed,
    /// so a cached session cannot outlive what it stands for.
    sessions: Arc<Mutex<HashMap<String, CachedSession>>>,
    /// Request changes, for `GET /v1/events`.
    pub events: tokio::sync::broadcast::Sender<Value>,
    /// When not empty, only these networks may connect (checked before the TLS handshake).
    pub allow: Arc<Vec<ipnet::IpNet>>,
    approvals: ApprovalWriter,
    /// Checkpoints SQLite's log for as long as the state is kept.
    _checkpointer: Option<Arc<crate::db::Checkpointer>>,
    /// The FIDO2 relying party, where the deployment configured one.
    pub fido: Option<crate::fido::Fido>,
}

impl ApiState {
    /// Starts the approval writer and, on SQLite, the checkpointer, so it must be called
    /// inside a Tokio runtime.
    pub fn new(db: Db, rules: QueueRules, limit: RateLimit) -> Self {
        let rules = Arc::new(rules);
        Self {
            approvals: ApprovalWriter::start(db.clone(), rules.clone(), None),
            _checkpointer: db.keep_checkpointing(Default::default()).map(Arc::new),
            db,
            rules,
            limit,
            buckets: Arc::default(),
            rate_limited: Arc::default(),
            sessions: Arc::default(),
            events: tokio::sync::broadcast::channel(1024).0,
            allow: Arc::default(),
            fido: None,
        }
    }

    /// FIDO2 security keys for this relying party.
    pub fn with_fido(mut self, fido: crate::fido::Fido) -> Self {
        // A writer that checks assertions for this relying party; the first one ends with
        // its handle.
        self.approvals =
            ApprovalWriter::start(self.db.clone(), self.rules.clone(), Some(fido.clone()));
        self.fido = Some(fido);
        self
    }

    /// Only peers in `networks` may connect.
    pub fn with_allowlist(mut self, networks: Vec<ipnet::IpNet>) -> Self {
        self.allow = Arc::new(networks);
        self
    }

    /// Whether `peer` may connect.
    pub fn allows(&self, peer: std::net::IpAddr) -> bool {
        self.allow.is_empty() || self.allow.iter().any(|net| net.contains(&peer))
    }

    fn announce(&self, view: &RequestView) {
        let event =
            json!({ "type": "request", "id": view.id, "seq": view.seq, "state": view.state });
        let _ = self.events.send(event);
    }

    fn limit(&self, key_hash: &str) -> Result<(), ApiError> {
        self.buckets.take(key_hash, self.limit).map_err(|seconds| {
            self.rate_limited.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut error = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many requests for this API key; wait and retry",
            );
            error.retry_after = Some(seconds);
            error
        })
    }

    /// The caller behind `Authorization: Bearer …`, after the rate limit.
    async fn caller(&self, headers: &HeaderMap) -> Result<Member, ApiError> {
        let token = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                ApiError::unauthorized("Authorization: send `Bearer <session token>`")
            })?;
        let token_hash = model::secret_hash(token);
        let cached = self.sessions.lock().ok().and_then(|cache| cache.get(&token_hash).cloned());
        let (member, key_hash) = match cached {
            Some((member, key_hash, expires)) if expires > model::now() => (member, key_hash),
            _ => {
                let (member, key_hash, expires) = model::session(&self.db, token).await?;
                if let Ok(mut cache) = self.sessions.lock() {
                    if cache.len() > 100_000 {
                        cache.clear();
                    }
                    cache.insert(token_hash, (member.clone(), key_hash.clone(), expires));
                }
                (member, key_hash)
            }
        };
        self.limit(&key_hash)?;
        Ok(member)
    }
}

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/session", post(open_session))
        .route("/v1/members", post(add_member).get(list_members))
        .route("/v1/members/{id}/api-keys", post(new_api_key))
        .route("/v1/vaults", post(set_vault).get(list_vaults))
        .route("/v1/requests", post(submit).get(list_requests))
        .route("/v1/requests/{id}", get(get_request))
        .route("/v1/requests/{id}/approvals", post(approve))
        .route("/v1/requests/{id}/rejections", post(reject))
        .route("/v1/requests/{id}/execution", post(execute))
        .route("/v1/requests/{id}/approvals/{owner}/fido", get(stored_fido_approval))
        .route("/v1/fido/config", get(fido_config))
        .route("/v1/requests/{id}/presence", get(presence))
        .route("/v1/fido/registrations", post(start_fido_registration))
        .route("/v1/fido/registrations/finish", post(finish_fido_registration))
        .route("/v1/fido/credentials", get(fido_credentials))
        .route("/v1/fido/credentials/{id}/confirm", post(confirm_fido))
        .route("/v1/fido/credentials/{id}/revoke", post(revoke_fido))
        .route("/v1/vaults/fido-policy", post(set_fido_policy))
        .route("/v1/audit", get(audit))
        .route("/v1/events", get(events))
        .route("/v1/openapi.json", get(openapi))
        .layer(axum::middleware::from_fn(refuse_nul))
}

/// Refuses a path or a query string that holds a NUL (`%00`, the only way one can arrive):
/// no identifier may hold one, and PostgreSQL refuses it in text, which in an approval would
/// fail the whole batch it is written with.
async fn refuse_nul(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let uri = request.uri();
    if uri.path().contains("%00") || uri.query().is_some_and(|query| query.contains("%00")) {
        use axum::response::IntoResponse as _;
        return ApiError::bad_request("path or query: must not hold a NUL character (%00)")
            .into_response();
    }
    next.run(request).await
}

/// Parses a JSON object body, refusing duplicate keys at any depth and NUL characters in any
/// key or string (refused by PostgreSQL in text; refused on SQLite too, alike).
fn body(bytes: &Bytes) -> Result<Value, ApiError> {
    countersign_core::request::check_unique_keys(bytes)
        .map_err(|e| ApiError::bad_request(format!("body: {}", e.problem)))?;
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request(format!("body: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request("body: must be a JSON object"));
    }
    // In valid JSON a NUL can only be written as this escape.
    if bytes.windows(6).any(|w| w == br"\u0000") {
        if let Some(field) = nul_at(&value, "") {
            return Err(ApiError::bad_request(format!("{field}: must not hold a NUL character")));
        }
    }
    Ok(value)
}

/// The path of the first key or string in `value` that holds a NUL.
fn nul_at(value: &Value, at: &str) -> Option<String> {
    let below = |key: &str| if at.is_empty() { key.to_owned() } else { format!("{at}.{key}") };
    match value {
        Value::String(text) => {
            text.contains('\0')
                .then(|| if at.is_empty() { "body".to_owned() } else { at.to_owned() })
        }
        Value::Array(items) => {
            items.iter().enumerate().find_map(|(i, item)| nul_at(item, &format!("{at}[{i}]")))
        }
        Value::Object(fields) => fields.iter().find_map(|(key, item)| {
            if key.contains('\0') {
                Some(below(&key.replace('\0', "\\0")))
            } else {
                nul_at(item, &below(key))
            }
        }),
        _ => None,
    }
}

type Answer = Result<Json<Value>, ApiError>;

/// JSON text rendered by the model, sent as it is.
struct RawJson(String);

impl axum::response::IntoResponse for RawJson {
    fn into_response(self) -> axum::response::Response {
        ([(axum::http::header::CONTENT_TYPE, "application/json")], self.0).into_response()
    }
}

type ViewAnswer = Result<RawJson, ApiError>;

/// Answers with `view` after announcing it on the event stream.
fn changed(state: &ApiState, view: RequestView) -> RawJson {
    state.announce(&view);
    RawJson(view.json)
}

async fn open_session(State(state): State<ApiState>, bytes: Bytes) -> Answer {
    let body = body(&bytes)?;
    let key = body
        .get("apiKey")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request("apiKey: is missing"))?;
    state.limit(&model::secret_hash(key))?;
    let (token, expires_at, member) = model::open_session(&state.db, key).await?;
    Ok(Json(json!({ "token": token, "expiresAt": expires_at, "member": member.view() })))
}

async fn add_member(State(state): State<ApiState>, headers: HeaderMap, bytes: Bytes) -> Answer {
    state.caller(&headers).await?.require(&[Role::Admin])?;
    Ok(Json(model::add_member(&state.db, &body(&bytes)?).await?.view()))
}

async fn list_members(State(state): State<ApiState>, headers: HeaderMap) -> Answer {
    state.caller(&headers).await?.require(&[Role::Admin])?;
    let members: Vec<Value> = model::members(&state.db).await?.iter().map(Member::view).collect();
    Ok(Json(json!({ "members": members })))
}

async fn new_api_key(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Answer {
    state.caller(&headers).await?.require(&[Role::Admin])?;
    Ok(Json(json!({ "member": id, "apiKey": model::new_api_key(&state.db, &id).await? })))
}

async fn set_vault(State(state): State<ApiState>, headers: HeaderMap, bytes: Bytes) -> Answer {
    state.caller(&headers).await?.require(&[Role::Admin])?;
    Ok(Json(model::vault_view(&model::set_vault(&state.db, &body(&bytes)?).await?)))
}

async fn list_vaults(State(state): State<ApiState>, headers: HeaderMap) -> Answer {
    state.caller(&headers).await?;
    let vaults: Vec<Value> =
        model::vaults(&state.db).await?.iter().map(model::vault_view).collect();
    Ok(Json(json!({ "vaults": vaults })))
}

async fn submit(State(state): State<ApiState>, headers: HeaderMap, bytes: Bytes) -> ViewAnswer {
    let caller = state.caller(&headers).await?;
    let view = model::submit(&state.db, &state.rules, &caller, &body(&bytes)?).await?;
    Ok(changed(&state, view))
}

#[derive(Deserialize)]
struct ListQuery {
    vault: Option<String>,
    state: Option<String>,
    after: Option<i64>,
    limit: Option<i64>,
}

async fn list_requests(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> ViewAnswer {
    state.caller(&headers).await?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad_request("limit: from 1 to 500"));
    }
    let after = query.after.unwrap_or(0).max(0);
    Ok(RawJson(
        model::list(&state.db, query.vault.as_deref(), query.state.as_deref(), after, limit)
            .await?,
    ))
}

async fn get_request(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ViewAnswer {
    state.caller(&headers).await?;
    Ok(RawJson(model::request_view(&state.db, &id).await?.json))
}

async fn approve(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: Bytes,
) -> ViewAnswer {
    let caller = state.caller(&headers).await?;
    let view = crate::approvals::approve(&state.approvals, &caller, &id, &body(&bytes)?).await?;
    Ok(changed(&state, view))
}

async fn fido_config(State(state): State<ApiState>, headers: HeaderMap) -> Answer {
    state.caller(&headers).await?;
    Ok(Json(crate::fido::config(state.fido.as_ref())?))
}

async fn presence(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Answer {
    let caller = state.caller(&headers).await?;
    Ok(Json(crate::fido::presence(&state.db, &state.rules, &caller, &id).await?))
}

async fn start_fido_registration(State(state): State<ApiState>, headers: HeaderMap) -> Answer {
    let caller = state.caller(&headers).await?;
    Ok(Json(crate::fido::start_registration(&state.db, state.fido.as_ref(), &caller).await?))
}

async fn finish_fido_registration(
    State(state): State<ApiState>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Answer {
    let caller = state.caller(&headers).await?;
    let body = body(&bytes)?;
    Ok(Json(
        crate::fido::finish_registration(&state.db, state.fido.as_ref(), &caller, &body).await?,
    ))
}

async fn fido_credentials(State(state): State<ApiState>, headers: HeaderMap) -> Answer {
    let caller = state.caller(&headers).await?;
    Ok(Json(crate::fido::credentials(&state.db, &caller).await?))
}

async fn confirm_fido(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Answer {
    let caller = state.caller(&headers).await?;
    Ok(Json(crate::fido::confirm(&state.db, &caller, &id).await?))
}

async fn revoke_fido(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Answer {
    let caller = state.caller(&headers).await?;
    Ok(Json(crate::fido::revoke(&state.db, &caller, &id).await?))
}

async fn set_fido_policy(
    State(state): State<ApiState>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Answer {
    let caller = state.caller(&headers).await?;
    Ok(Json(crate::fido::set_policy(&state.db, &caller, &body(&bytes)?).await?))
}

async fn stored_fido_approval(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path((id, owner)): Path<(String, String)>,
) -> Answer {
    state.caller(&headers).await?;
    Ok(Json(crate::fido::stored_approval(&state.db, state.fido.as_ref(), &id, &owner).await?))
}

async fn reject(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: Bytes,
) -> ViewAnswer {
    let caller = state.caller(&headers).await?;
    let view = model::reject(&state.db, &caller, &id, &body(&bytes)?).await?;
    Ok(changed(&state, view))
}

async fn execute(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: Bytes,
) -> ViewAnswer {
    let caller = state.caller(&headers).await?;
    let view = model::mark_executed(&state.db, &caller, &id, &body(&bytes)?).await?;
    Ok(changed(&state, view))
}

async fn audit(State(state): State<ApiState>, headers: HeaderMap) -> Answer {
    state.caller(&headers).await?.require(&[Role::Admin, Role::Viewer, Role::Approver])?;
    let entries = model::audit_entries(&state.db).await?;
    Ok(Json(json!({ "entries": entries })))
}

/// `GET /v1/events`: server-sent events, one `request` event per change of a request (its id,
/// seq and state); a client that falls behind gets a `resync` event and lists by cursor.
async fn events(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> Result<
    axum::response::sse::Sse<
        impl futures_util::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>,
    >,
    ApiError,
> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    state.caller(&headers).await?;
    let receiver = state.events.subscribe();
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        let event = match receiver.recv().await {
            Ok(value) => Event::default().event("request").data(value.to_string()),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                Event::default().event("resync").data("{}")
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(event), receiver))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

async fn openapi() -> Json<Value> {
    Json(serde_json::from_str(include_str!("../openapi.json")).unwrap_or(Value::Null))
}
