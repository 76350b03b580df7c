//! Accounts over HTTP: who is signed in, the operator accounts (admins), and the
//! audit trail of every change (admins).

use crate::auth::{Admin, Caller, Viewer};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::geo::Link;
use crate::params::{enc, page_limit, BaseUrl, StrictQuery};
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use cityhub_core::credentials::{self, Role, Token};
use cityhub_store::trust::{AuditFilter, OperatorInfo};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

/// The caller of this request: the map shows who is signed in.
#[utoipa::path(get, path = "/api/v1/me", tag = "accounts",
    security(("bearer" = [])),
    responses((status = 200, description = "The caller", body = Caller),
              (status = 401, description = "No token", body = ErrorBody),
              (status = 403, description = "Wrong, disabled or expired token", body = ErrorBody)))]
pub async fn me(Viewer(caller): Viewer) -> Json<Caller> {
    Json(caller)
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// Only changes by this actor (`operator:alice`, `bootstrap-admin`, `cli:root`).
    actor: Option<String>,
    /// Only this action (`alert.acknowledged`), or a family ending in `.` (`sensor.`).
    action: Option<String>,
    /// Only changes of this target (`sensor:bin-001`, `operator:alice`, `device:bin-001`).
    target: Option<String>,
    /// Only changes at or after this instant (RFC 3339).
    since: Option<DateTime<Utc>>,
    /// Rows older than this id (the `next` link carries it).
    before: Option<i64>,
    /// Default 100.
    #[param(minimum = 1)]
    limit: Option<u32>,
}

/// One change in the audit trail.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditOut {
    pub id: i64,
    pub at: DateTime<Utc>,
    /// Who made the change.
    pub actor: String,
    pub action: String,
    pub target: String,
    /// The target's values before the change (null when it was created)...
    #[schema(value_type = Option<Object>)]
    pub before: Option<Value>,
    /// ...and after it.
    #[schema(value_type = Option<Object>)]
    pub after: Option<Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    pub audit: Vec<AuditOut>,
    pub links: Vec<Link>,
}

/// The audit trail, newest first: every acknowledgement, registry change, import and
/// credential change, with who made it and the values before and after. Admins only.
#[utoipa::path(get, path = "/api/v1/audit", tag = "accounts", params(AuditParams),
    security(("bearer" = [])),
    responses((status = 200, description = "A page of the audit trail", body = AuditPage),
              (status = 400, description = "Bad parameter", body = ErrorBody),
              (status = 401, description = "No token", body = ErrorBody),
              (status = 403, description = "Not an admin", body = ErrorBody)))]
pub async fn audit(
    _: Admin,
    State(s): State<AppState>,
    base: BaseUrl,
    StrictQuery(p): StrictQuery<AuditParams>,
) -> ApiResult<Json<AuditPage>> {
    let limit = page_limit(&s, p.limit, 100)?;
    let rows = s
        .store()?
        .audit_entries(&AuditFilter {
            actor: p.actor.clone(),
            action: p.action.clone(),
            target: p.target.clone(),
            since: p.since,
            before: p.before,
            limit: i64::from(limit) + 1,
        })
        .await?;
    let more = rows.len() > limit as usize;
    let audit: Vec<AuditOut> = rows
        .into_iter()
        .take(limit as usize)
        .map(|r| AuditOut {
            id: r.id,
            at: r.at,
            actor: r.actor,
            action: r.action,
            target: r.target,
            before: r.before,
            after: r.after,
        })
        .collect();
    let mut links = Vec::new();
    if let (true, Some(last)) = (more, audit.last()) {
        let mut q = format!("limit={limit}&before={}", last.id);
        for (k, v) in [
            ("actor", &p.actor),
            ("action", &p.action),
            ("target", &p.target),
        ] {
            if let Some(v) = v {
                q.push_str(&format!("&{k}={}", enc(v)));
            }
        }
        if let Some(t) = p.since {
            q.push_str(&format!("&since={}", enc(&t.to_rfc3339())));
        }
        links.push(Link::new(
            "next",
            format!("{}/api/v1/audit?{q}", base.0),
            "application/json",
            "Older changes",
        ));
    }
    Ok(Json(AuditPage { audit, links }))
}

/// An operator account (never its token or hash).
#[derive(Debug, Serialize, ToSchema)]
pub struct OperatorOut {
    pub name: String,
    #[schema(value_type = String)]
    pub role: Role,
    pub created_at: DateTime<Utc>,
    pub rotated_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub disabled_at: Option<DateTime<Utc>>,
}

impl From<OperatorInfo> for OperatorOut {
    fn from(o: OperatorInfo) -> Self {
        Self {
            name: o.name,
            role: o.role,
            created_at: o.created_at,
            rotated_at: o.rotated_at,
            expires_at: o.expires_at,
            disabled_at: o.disabled_at,
        }
    }
}

/// The operator accounts. Admins only.
#[utoipa::path(get, path = "/api/v1/operators", tag = "accounts",
    security(("bearer" = [])),
    responses((status = 200, description = "Every account", body = [OperatorOut]),
              (status = 401, description = "No token", body = ErrorBody),
              (status = 403, description = "Not an admin", body = ErrorBody)))]
pub async fn operators(_: Admin, State(s): State<AppState>) -> ApiResult<Json<Vec<OperatorOut>>> {
    let list = s.store()?.operators().await?;
    Ok(Json(list.into_iter().map(Into::into).collect()))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOperator {
    /// Letters, digits and `._@-`, at most 64.
    pub name: String,
    #[schema(value_type = String)]
    pub role: Role,
    /// When the token stops working (RFC 3339); never when absent.
    pub expires_at: Option<DateTime<Utc>>,
}

/// An account with its token: the only time the token is shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct IssuedToken {
    pub name: String,
    #[schema(value_type = String)]
    pub role: Role,
    pub token: String,
    pub expires_at: Option<DateTime<Utc>>,
}

/// What [`check_name`] takes, for the API document.
pub const OPERATOR_NAME_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$";

fn check_name(name: &str) -> ApiResult<()> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(ApiError::BadRequest(
            "name: 1 to 64 letters, digits or ._@- starting with a letter or digit".into(),
        ))
    }
}

/// Adds an operator account and returns its token, once. Admins only.
#[utoipa::path(post, path = "/api/v1/operators", tag = "accounts",
    request_body(content = NewOperator, content_type = "application/json"),
    security(("bearer" = [])),
    responses((status = 201, description = "Created; the token is shown only now", body = IssuedToken),
              (status = 400, description = "Bad name, role or expiry", body = ErrorBody),
              (status = 401, description = "No token", body = ErrorBody),
              (status = 403, description = "Not an admin", body = ErrorBody),
              (status = 409, description = "The name is taken", body = ErrorBody)))]
pub async fn add_operator(
    Admin(caller): Admin,
    State(s): State<AppState>,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<IssuedToken>)> {
    let n: NewOperator = crate::params::json_object(&body)?;
    check_name(&n.name)?;
    let token = Token::generate();
    let hash = credentials::hash(&token.secret);
    let o = s
        .store()?
        .add_operator(
            &caller.actor(),
            &n.name,
            n.role,
            &token.id,
            &hash,
            n.expires_at,
        )
        .await?;
    s.accounts.invalidate().await;
    tracing::info!(operator = %o.name, role = %o.role, by = %caller.name, "Operator account added.");
    Ok((
        StatusCode::CREATED,
        Json(IssuedToken {
            name: o.name,
            role: o.role,
            token: token.text(),
            expires_at: o.expires_at,
        }),
    ))
}

/// Disables an account: its token stops working within seconds on every hub. Admins only.
#[utoipa::path(post, path = "/api/v1/operators/{name}/disable", tag = "accounts",
    params(("name" = String, Path, description = "The account")),
    security(("bearer" = [])),
    responses((status = 200, description = "Disabled", body = OperatorOut),
              (status = 401, description = "No token", body = ErrorBody),
              (status = 403, description = "Not an admin", body = ErrorBody),
              (status = 404, description = "No such account", body = ErrorBody)))]
pub async fn disable_operator(
    Admin(caller): Admin,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<OperatorOut>> {
    let o = s
        .store()?
        .disable_operator(&caller.actor(), &name)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no operator {name:?}")))?;
    s.accounts.invalidate().await;
    tracing::info!(operator = %o.name, by = %caller.name, "Operator account disabled.");
    Ok(Json(o.into()))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rotate {
    /// When the new token stops working; never when absent.
    pub expires_at: Option<DateTime<Utc>>,
}

/// A new token for an account (the old one stops working; a disabled account is
/// enabled again). Admins only.
#[utoipa::path(post, path = "/api/v1/operators/{name}/rotate", tag = "accounts",
    params(("name" = String, Path, description = "The account")),
    request_body(content = Option<Rotate>, description = "Optional expiry", content_type = "application/json"),
    security(("bearer" = [])),
    responses((status = 200, description = "The new token, shown only now", body = IssuedToken),
              (status = 401, description = "No token", body = ErrorBody),
              (status = 403, description = "Not an admin", body = ErrorBody),
              (status = 404, description = "No such account", body = ErrorBody)))]
pub async fn rotate_operator(
    Admin(caller): Admin,
    State(s): State<AppState>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<IssuedToken>> {
    // No body, or JSON null: no expiry.
    let r: Rotate = crate::params::json_object_or_none(&body)?;
    let token = Token::generate();
    let hash = credentials::hash(&token.secret);
    let o = s
        .store()?
        .rotate_operator(&caller.actor(), &name, &token.id, &hash, r.expires_at)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no operator {name:?}")))?;
    s.accounts.invalidate().await;
    tracing::info!(operator = %o.name, by = %caller.name, "Operator token rotated.");
    Ok(Json(IssuedToken {
        name: o.name,
        role: o.role,
        token: token.text(),
        expires_at: o.expires_at,
    }))
}
