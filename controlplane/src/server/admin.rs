//! `Admin`: what the `tollgate` CLI calls — push, versions, node status,
//! fleet-wide limits, operator tokens, the audit trail and approval requests
//! (`approvals/operators.rs`). Each method
//! first checks the caller's role (see `authorize`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tollgate_proto::v1::admin_server::Admin;
use tollgate_proto::v1::{
    Approval, CreateTokenRequest, CreateTokenResponse, DecideApprovalRequest, FieldError,
    GetRolloutRequest, GetVersionRequest, ListApprovalsRequest, ListApprovalsResponse,
    ListAuditRequest, ListAuditResponse, ListLimitsRequest, ListLimitsResponse,
    ListRolloutsRequest, ListRolloutsResponse, ListTokensRequest, ListTokensResponse,
    ListVersionsRequest, ListVersionsResponse, NodeStatusRequest, NodeStatusResponse,
    PolicyVersion, PushPolicyRequest, PushPolicyResponse, RevokeTokenRequest, RolloutActionRequest,
    RolloutStatus, StartRolloutRequest, TokenInfo,
};
use tonic::{Request, Response, Status};

use super::approvals::operators;
use super::authorize::Action;
use super::rollouts::operators as rollout_ops;
use super::{ControlPlane, Latest};
use crate::auth::Principal;
use crate::push;
use crate::role::Role;
use crate::status::unix_now;
use crate::store::{StoredVersion, content_hash};

/// How often a status watcher gets the table even without a change, so
/// nodes turning STALE (derived on read) show up.
const WATCH_REFRESH: Duration = Duration::from_secs(1);

pub struct AdminService {
    cp: Arc<ControlPlane>,
}

impl AdminService {
    pub fn new(cp: Arc<ControlPlane>) -> Self {
        Self { cp }
    }
}

fn to_proto(v: StoredVersion) -> PolicyVersion {
    PolicyVersion {
        version: v.version,
        content_hash: v.content_hash,
        message: v.message,
        created_at: v.created_at,
        content: v.content,
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn push_policy(
        &self,
        request: Request<PushPolicyRequest>,
    ) -> Result<Response<PushPolicyResponse>, Status> {
        let target = push_target(request.get_ref());
        let who = self
            .cp
            .authorize(&request, Role::Admin, Action::PolicyPush, &target)
            .await?;
        self.push(&who, target, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_versions(
        &self,
        request: Request<ListVersionsRequest>,
    ) -> Result<Response<ListVersionsResponse>, Status> {
        self.viewer(&request, Action::PolicyRead).await?;
        let versions = self.cp.store(|s| s.list()).await?;
        Ok(Response::new(ListVersionsResponse {
            versions: versions.into_iter().map(to_proto).collect(),
        }))
    }

    async fn get_version(
        &self,
        request: Request<GetVersionRequest>,
    ) -> Result<Response<PolicyVersion>, Status> {
        self.viewer(&request, Action::PolicyRead).await?;
        let n = request.into_inner().version;
        match self.cp.store(move |s| s.get(n)).await? {
            Some(v) => Ok(Response::new(to_proto(v))),
            None => Err(Status::not_found(format!("no policy version {n}"))),
        }
    }

    async fn node_status(
        &self,
        request: Request<NodeStatusRequest>,
    ) -> Result<Response<NodeStatusResponse>, Status> {
        self.viewer(&request, Action::Status).await?;
        Ok(Response::new(NodeStatusResponse {
            nodes: self.cp.fleet.snapshot(),
        }))
    }

    type WatchStatusStream = ReceiverStream<Result<NodeStatusResponse, Status>>;

    async fn watch_status(
        &self,
        request: Request<NodeStatusRequest>,
    ) -> Result<Response<Self::WatchStatusStream>, Status> {
        self.viewer(&request, Action::Status).await?;
        // Checked again before every table: a token revoked (or demoted)
        // while it watches ends its watch within a refresh.
        let metadata = request.metadata().clone();
        let cp = self.cp.clone();
        let Some(tracked) = cp.drain.track() else {
            return Err(super::distribution::shutting_down());
        };
        let mut draining = cp.drain.latch();
        let (tx, rx) = mpsc::channel(2);
        let mut changed = cp.fleet.subscribe();
        tokio::spawn(async move {
            // Counted as open until this task ends; declared first, so it
            // is dropped after `tx`, which ends the stream.
            let _tracked = tracked;
            let tx = tx;
            let mut last = None;
            loop {
                if let Err(e) = cp
                    .auth
                    .check(&metadata, Role::Viewer, Action::Status.command())
                {
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
                let nodes = cp.fleet.snapshot();
                if last.as_ref() != Some(&nodes) {
                    let msg = NodeStatusResponse {
                        nodes: nodes.clone(),
                    };
                    if tx.send(Ok(msg)).await.is_err() {
                        return;
                    }
                    last = Some(nodes);
                }
                tokio::select! {
                    // Draining first: the streams it ends change the table,
                    // and a stopping control plane sends no more tables.
                    biased;
                    () = draining.set() => return,
                    r = changed.changed() => if r.is_err() { return },
                    () = tokio::time::sleep(WATCH_REFRESH) => {}
                    () = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn list_limits(
        &self,
        request: Request<ListLimitsRequest>,
    ) -> Result<Response<ListLimitsResponse>, Status> {
        self.viewer(&request, Action::Limits).await?;
        let server = request.into_inner().server;
        let buckets = self.cp.quota.list(&server)?;
        Ok(Response::new(ListLimitsResponse { buckets }))
    }

    async fn create_token(
        &self,
        request: Request<CreateTokenRequest>,
    ) -> Result<Response<CreateTokenResponse>, Status> {
        let name = request.get_ref().name.clone();
        let who = self
            .cp
            .authorize(&request, Role::Admin, Action::TokenCreate, &name)
            .await?;
        let created = self.cp.create_token(&who, request.into_inner()).await?;
        Ok(Response::new(created))
    }

    async fn list_tokens(
        &self,
        request: Request<ListTokensRequest>,
    ) -> Result<Response<ListTokensResponse>, Status> {
        self.cp
            .authorize(&request, Role::Admin, Action::TokenList, "")
            .await?;
        Ok(Response::new(self.cp.list_tokens().await?))
    }

    async fn revoke_token(
        &self,
        request: Request<RevokeTokenRequest>,
    ) -> Result<Response<TokenInfo>, Status> {
        let name_or_id = request.get_ref().token.clone();
        let who = self
            .cp
            .authorize(&request, Role::Admin, Action::TokenRevoke, &name_or_id)
            .await?;
        Ok(Response::new(
            self.cp.revoke_token(&who, &name_or_id).await?,
        ))
    }

    async fn list_audit(
        &self,
        request: Request<ListAuditRequest>,
    ) -> Result<Response<ListAuditResponse>, Status> {
        self.viewer(&request, Action::AuditList).await?;
        let since = request.into_inner().since;
        Ok(Response::new(self.cp.list_audit(since).await?))
    }

    async fn list_approvals(
        &self,
        request: Request<ListApprovalsRequest>,
    ) -> Result<Response<ListApprovalsResponse>, Status> {
        self.viewer(&request, Action::ApprovalsRead).await?;
        operators::list(&self.cp, request.get_ref()).map(Response::new)
    }

    type WatchApprovalsStream = operators::Watch;

    async fn watch_approvals(
        &self,
        request: Request<ListApprovalsRequest>,
    ) -> Result<Response<Self::WatchApprovalsStream>, Status> {
        self.viewer(&request, Action::ApprovalsRead).await?;
        let metadata = request.metadata().clone();
        operators::watch(self.cp.clone(), metadata, request.get_ref()).map(Response::new)
    }

    async fn decide_approval(
        &self,
        request: Request<DecideApprovalRequest>,
    ) -> Result<Response<Approval>, Status> {
        let id = request.get_ref().id.clone();
        let who = self
            .cp
            .authorize(&request, Role::Approver, Action::ApprovalDecide, &id)
            .await?;
        operators::decide(&self.cp, &who, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn start_rollout(
        &self,
        request: Request<StartRolloutRequest>,
    ) -> Result<Response<RolloutStatus>, Status> {
        let target = format!("version {}", request.get_ref().version);
        let who = self
            .cp
            .authorize(&request, Role::Admin, Action::RolloutStart, &target)
            .await?;
        let started = rollout_ops::start(&self.cp, &who.name, request.into_inner()).await;
        let (target, outcome, detail) = match &started {
            Ok(s) => (
                format!("rollout {} of version {}", s.id, s.version),
                "started",
                format!("from version {}", s.from_version),
            ),
            Err(e) => (target, "refused", e.message().to_owned()),
        };
        self.cp
            .audit(&who, Action::RolloutStart, &target, outcome, &detail)
            .await;
        started.map(Response::new)
    }

    async fn act_on_rollout(
        &self,
        request: Request<RolloutActionRequest>,
    ) -> Result<Response<RolloutStatus>, Status> {
        let req = request.get_ref();
        let target = if req.id.is_empty() {
            "newest rollout".to_owned()
        } else {
            format!("rollout {}", req.id)
        };
        let action = req.action.clone();
        let who = self
            .cp
            .authorize(&request, Role::Admin, Action::RolloutAct, &target)
            .await?;
        let done = rollout_ops::act(&self.cp, &who.name, request.into_inner()).await;
        let (target, outcome) = match &done {
            Ok(s) => (format!("rollout {}", s.id), action.clone()),
            Err(e) => (target, format!("refused: {}", e.message())),
        };
        self.cp
            .audit(&who, Action::RolloutAct, &target, &outcome, &action)
            .await;
        done.map(Response::new)
    }

    async fn get_rollout(
        &self,
        request: Request<GetRolloutRequest>,
    ) -> Result<Response<RolloutStatus>, Status> {
        self.viewer(&request, Action::RolloutRead).await?;
        rollout_ops::get(&self.cp, request.get_ref())
            .await
            .map(Response::new)
    }

    type WatchRolloutStream = tokio_stream::wrappers::ReceiverStream<Result<RolloutStatus, Status>>;

    async fn watch_rollout(
        &self,
        request: Request<GetRolloutRequest>,
    ) -> Result<Response<Self::WatchRolloutStream>, Status> {
        self.viewer(&request, Action::RolloutRead).await?;
        let metadata = request.metadata().clone();
        let cp = self.cp.clone();
        let allowed = move || {
            cp.auth
                .check(&metadata, Role::Viewer, Action::RolloutRead.command())
                .map(|_| ())
                .map_err(Status::from)
        };
        rollout_ops::watch(self.cp.clone(), request.into_inner(), allowed).map(Response::new)
    }

    async fn list_rollouts(
        &self,
        request: Request<ListRolloutsRequest>,
    ) -> Result<Response<ListRolloutsResponse>, Status> {
        self.viewer(&request, Action::RolloutRead).await?;
        rollout_ops::list(&self.cp).await.map(Response::new)
    }
}

/// What a push would change, for the audit trail before it has a version.
fn push_target(req: &PushPolicyRequest) -> String {
    if req.server.is_empty() {
        "bundle".to_owned()
    } else {
        format!("server {}", req.server)
    }
}

impl AdminService {
    /// Reads need role viewer.
    async fn viewer<T>(&self, request: &Request<T>, action: Action) -> Result<Principal, Status> {
        self.cp.authorize(request, Role::Viewer, action, "").await
    }

    /// Validates and stores a push (under the push lock, so versions reach
    /// the watch in order).
    async fn push(
        &self,
        who: &Principal,
        target: String,
        req: PushPolicyRequest,
    ) -> Result<PushPolicyResponse, Status> {
        let cp = &self.cp;
        if let Some(active) = cp.rollouts.active() {
            if !req.force {
                let why = format!(
                    "rollout {} of version {} is {} (step {} of {}); a push now would undo it: \
                     let it finish, `tollgate rollout abort {}`, or push with --force (which \
                     aborts it)",
                    active.def.id,
                    active.def.version,
                    active.state.name(),
                    active.step_of().0,
                    active.step_of().1,
                    active.def.id
                );
                cp.audit(who, Action::PolicyPush, &target, "refused", &why)
                    .await;
                return Err(Status::failed_precondition(why));
            }
            if let Some(id) = rollout_ops::abort_for_push(cp).await? {
                tracing::warn!(rollout = %id, "rollout aborted by a forced push");
                cp.audit(
                    who,
                    Action::RolloutAct,
                    &format!("rollout {id}"),
                    "abort",
                    "push --force",
                )
                .await;
            }
        }
        let _serial = cp.push_lock.lock().await;
        let latest = cp.latest.borrow().clone();
        let server = Some(req.server.as_str()).filter(|s| !s.is_empty());
        let content = match push::prepare(
            &req.content,
            server,
            latest.as_ref().map(|l| (l.version, &l.stored[..])),
        ) {
            Ok(content) => content,
            Err(errors) => {
                cp.metrics.pushes_refused.inc();
                let first = errors.first().map_or_else(String::new, |e| {
                    let at = if e.pointer.is_empty() {
                        "/"
                    } else {
                        &e.pointer
                    };
                    format!("{at}: {}", e.message)
                });
                cp.audit(who, Action::PolicyPush, &target, "refused", &first)
                    .await;
                return Ok(PushPolicyResponse {
                    accepted: false,
                    version: 0,
                    created: false,
                    errors: errors
                        .into_iter()
                        .map(|e| FieldError {
                            pointer: e.pointer,
                            message: e.message,
                        })
                        .collect(),
                });
            }
        };
        let hash = content_hash(&content);
        let message = req.message;
        let detail = if req.stage {
            format!("staged; {message}")
        } else {
            message.clone()
        };
        let appended = cp
            .store(move |s| s.append(&content, &hash, &message, unix_now()))
            .await;
        let (stored, created) = match appended {
            Ok(appended) => appended,
            Err(e) => {
                cp.audit(who, Action::PolicyPush, &target, "failed", e.message())
                    .await;
                return Err(e);
            }
        };
        let version = stored.version;
        // In the trail before the fleet is sent it (and before the fan-out
        // takes the runtime's attention from this reply).
        let outcome = if created { "accepted" } else { "unchanged" };
        cp.audit(
            who,
            Action::PolicyPush,
            &format!("version {version}"),
            outcome,
            &detail,
        )
        .await;
        if created && req.stage {
            // Stored for a rollout; nothing is sent until one starts.
            cp.store(move |s| s.stage(version, true)).await?;
            tracing::info!(version, hash = %stored.content_hash, "policy staged");
        } else if created {
            tracing::info!(version, hash = %stored.content_hash, "policy pushed");
            cp.metrics.pushes.inc();
            cp.metrics.latest_version.set(version as i64);
            let latest = Latest::new(stored, &cp.grant_key);
            cp.latest.send_replace(Some(Arc::new(latest)));
        }
        Ok(PushPolicyResponse {
            accepted: true,
            version,
            created,
            errors: Vec::new(),
        })
    }
}
