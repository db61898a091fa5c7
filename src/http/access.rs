//! Authorisation: each protected handler takes a [`Require<P>`] argument
//! naming the one [`Permission`] its route needs. The extractor
//! authenticates the caller (401), applies its rate limit (429) and checks
//! its role (403) before the body is read, so a caller without the right
//! learns nothing from the body's validation.
//!
//! Agent keys act only for the agent ids in their scope: on a route with an
//! `{agentId}` path parameter the parameter must be in the scope. A route
//! without one admits an agent key only when its handler narrows the answer
//! to the scope itself (the event feed), marked by
//! [`Perm::NARROWED_BY_HANDLER`].

use std::marker::PhantomData;
use std::ops::Deref;

use axum::extract::{FromRequestParts, RawPathParams};
use axum::http::request::Parts;

use super::auth::{authenticate, missing_credentials};
use super::keyring::{forbidden, Principal};
use crate::domain::apikey::{Access, Permission};
use crate::error::ApiError;
use crate::http::state::AppState;

/// A permission as a type, for [`Require`].
pub trait Perm: Send + Sync + 'static {
    /// The right it stands for.
    const PERMISSION: Permission;
    /// Whether the handler itself narrows its answer to an agent key's
    /// scope (so such keys may call a route with no agent in its path).
    const NARROWED_BY_HANDLER: bool = false;
}

/// One type per [`Permission`], to write `Require<perm::ReportState>`.
pub mod perm {
    use super::{Perm, Permission};

    macro_rules! perms {
        ($($(#[$doc:meta])* $name:ident $(narrowed $n:literal)?;)*) => {$(
            $(#[$doc])*
            #[derive(Debug)]
            pub struct $name;
            impl Perm for $name {
                const PERMISSION: Permission = Permission::$name;
                $(const NARROWED_BY_HANDLER: bool = $n;)?
            }
        )*};
    }

    perms! {
        /// [`Permission::Register`].
        Register;
        /// [`Permission::ListAgents`].
        ListAgents;
        /// [`Permission::ReadAgent`].
        ReadAgent;
        /// [`Permission::ReportState`].
        ReportState;
        /// [`Permission::ReadWorkflows`].
        ReadWorkflows;
        /// [`Permission::ManageWorkflows`].
        ManageWorkflows;
        /// [`Permission::Trigger`].
        Trigger;
        /// [`Permission::ReadSessions`].
        ReadSessions;
        /// [`Permission::CancelSessions`].
        CancelSessions;
        /// [`Permission::ReadEvents`]: the feed handler filters agent keys'
        /// events to their scope.
        ReadEvents narrowed true;
        /// [`Permission::ManageKeys`].
        ManageKeys;
        /// [`Permission::ManageLeases`].
        ManageLeases;
        /// [`Permission::ResetState`].
        ResetState;
        /// [`Permission::ReadAudit`].
        ReadAudit;
    }
}

/// An authenticated caller holding the permission `P`.
#[derive(Debug)]
pub struct Require<P>(pub Principal, PhantomData<P>);

impl<P> Deref for Require<P> {
    type Target = Principal;

    fn deref(&self) -> &Principal {
        &self.0
    }
}

impl<P: Perm> FromRequestParts<AppState> for Require<P> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let principal = authenticate(&state.keys, &parts.headers, &parts.extensions)
            .await?
            .ok_or_else(missing_credentials)?;
        let p = P::PERMISSION;
        match principal.role().access(p) {
            Access::All => {}
            Access::Denied => return Err(forbidden(principal.role(), p)),
            Access::Scoped => {
                let params = RawPathParams::from_request_parts(parts, state).await.ok();
                let agent = params
                    .as_ref()
                    .and_then(|ps| ps.iter().find(|(k, _)| *k == "agentId").map(|(_, v)| v));
                match agent {
                    Some(agent) => principal.require_for_agent(p, agent)?,
                    None if P::NARROWED_BY_HANDLER => {}
                    None => return Err(forbidden(principal.role(), p)),
                }
            }
        }
        Ok(Self(principal, PhantomData))
    }
}
