//! API keys: created, listed and revoked.

use tonic::{Request, Response, Status};

use citycredit::auth::authorize;
use citycredit::proto::v1 as pb;
use citycredit::wire::{bare as strip, checked_micros};
use citycredit_core::auth::Action;
use citycredit_store::now_micros;

use super::{RegistryApi, check_ids, key_name, key_pb};
use crate::error::RegistryError;
use crate::keys;
use crate::store::{Audit, KeyRow};

pub(super) async fn create_api_key(
    api: &RegistryApi,
    request: Request<pb::CreateApiKeyRequest>,
) -> std::result::Result<Response<pb::CreateApiKeyResponse>, Status> {
    let who = authorize(&request, &api.org().access, Action::Administer)?.clone();
    let req = request.into_inner();
    check_ids(&[("principal", &req.principal)])?;
    let id = strip(&req.principal, "principals/").to_owned();
    if id.is_empty() {
        return Err(RegistryError::invalid("principal", "required: principals/{id}").into());
    }
    let now = now_micros();
    let expire = req
        .expire_time
        .as_ref()
        .map(checked_micros)
        .transpose()
        .map_err(|why| RegistryError::invalid("expire_time", why))?;
    if expire.is_some_and(|e| e <= now) {
        return Err(RegistryError::invalid("expire_time", "must be in the future").into());
    }
    if api
        .registry
        .store
        .principal(&id)
        .await
        .map_err(RegistryError::from)?
        .is_none()
    {
        return Err(RegistryError::NotFound(format!("principals/{id}")).into());
    }
    let (prefix, secret) = keys::generate();
    let row = KeyRow {
        prefix: prefix.clone(),
        principal: id.clone(),
        create_micros: now,
        expire_micros: expire,
        revoke_micros: None,
    };
    let resource = format!("principals/{id}/apiKeys/{prefix}");
    api.registry
        .store
        .create_key(
            &row,
            &keys::hash(&secret),
            Audit {
                principal: &who.id,
                action: "CreateApiKey",
                resource: &resource,
                detail: String::new(),
            },
        )
        .await
        .map_err(RegistryError::from)?;
    api.republish().await?;
    tracing::info!(key_prefix = %prefix, principal = %id, by = %who.id, "api key created");
    Ok(Response::new(pb::CreateApiKeyResponse {
        api_key: Some(key_pb(&row)),
        secret,
    }))
}

pub(super) async fn list_api_keys(
    api: &RegistryApi,
    request: Request<pb::ListApiKeysRequest>,
) -> std::result::Result<Response<pb::ListApiKeysResponse>, Status> {
    authorize(&request, &api.org().access, Action::Administer)?;
    check_ids(&[("principal", &request.get_ref().principal)])?;
    let principal = strip(&request.get_ref().principal, "principals/").to_owned();
    let rows = api
        .registry
        .store
        .keys((!principal.is_empty()).then_some(principal.as_str()))
        .await
        .map_err(RegistryError::from)?;
    Ok(Response::new(pb::ListApiKeysResponse {
        api_keys: rows.iter().map(key_pb).collect(),
    }))
}

pub(super) async fn revoke_api_key(
    api: &RegistryApi,
    request: Request<pb::RevokeApiKeyRequest>,
) -> std::result::Result<Response<pb::RevokeApiKeyResponse>, Status> {
    let who = authorize(&request, &api.org().access, Action::Administer)?.clone();
    let name = request.into_inner().name;
    check_ids(&[("name", &name)])?;
    let (owner, prefix) = key_name(&name)?;
    // A key named under another principal is as unknown as a key that does not exist: the
    // same answer, so the call is no oracle for which prefixes exist.
    let unknown = || match &owner {
        Some(id) => RegistryError::NotFound(format!("principals/{id}/apiKeys/{prefix}")),
        None => RegistryError::NotFound(format!("apiKeys/{prefix}")),
    };
    let row = api
        .registry
        .store
        .key(&prefix)
        .await
        .map_err(RegistryError::from)?
        .filter(|row| owner.as_ref().is_none_or(|id| *id == row.principal))
        .ok_or_else(unknown)?;
    if row.revoke_micros.is_none() {
        let resource = format!("principals/{}/apiKeys/{prefix}", row.principal);
        api.registry
            .store
            .revoke_key(
                &prefix,
                now_micros(),
                Audit {
                    principal: &who.id,
                    action: "RevokeApiKey",
                    resource: &resource,
                    detail: String::new(),
                },
            )
            .await
            .map_err(RegistryError::from)?;
        api.republish().await?;
        tracing::info!(key_prefix = %prefix, by = %who.id, "api key revoked");
    }
    let row = api
        .registry
        .store
        .key(&prefix)
        .await
        .map_err(RegistryError::from)?
        .unwrap_or(row);
    Ok(Response::new(pb::RevokeApiKeyResponse {
        api_key: Some(key_pb(&row)),
    }))
}
