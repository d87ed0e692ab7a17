//! `Admin`: what the `tollgate` CLI calls — push, versions, node status,
//! fleet-wide limits.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tollgate_proto::v1::admin_server::Admin;
use tollgate_proto::v1::{
    FieldError, GetVersionRequest, ListLimitsRequest, ListLimitsResponse, ListVersionsRequest,
    ListVersionsResponse, NodeStatusRequest, NodeStatusResponse, PolicyVersion, PushPolicyRequest,
    PushPolicyResponse,
};
use tonic::{Request, Response, Status};

use super::{ControlPlane, Latest};
use crate::push;
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
        let req = request.into_inner();
        let cp = &self.cp;
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
                return Ok(Response::new(PushPolicyResponse {
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
                }));
            }
        };
        let hash = content_hash(&content);
        let message = req.message;
        let (stored, created) = cp
            .store(move |s| s.append(&content, &hash, &message, unix_now()))
            .await?;
        let version = stored.version;
        if created {
            tracing::info!(version, hash = %stored.content_hash, "policy pushed");
            cp.metrics.pushes.inc();
            cp.metrics.latest_version.set(version as i64);
            let latest = Latest::new(stored, &cp.grant_key);
            cp.latest.send_replace(Some(Arc::new(latest)));
        }
        Ok(Response::new(PushPolicyResponse {
            accepted: true,
            version,
            created,
            errors: Vec::new(),
        }))
    }

    async fn list_versions(
        &self,
        _: Request<ListVersionsRequest>,
    ) -> Result<Response<ListVersionsResponse>, Status> {
        let versions = self.cp.store(|s| s.list()).await?;
        Ok(Response::new(ListVersionsResponse {
            versions: versions.into_iter().map(to_proto).collect(),
        }))
    }

    async fn get_version(
        &self,
        request: Request<GetVersionRequest>,
    ) -> Result<Response<PolicyVersion>, Status> {
        let n = request.into_inner().version;
        match self.cp.store(move |s| s.get(n)).await? {
            Some(v) => Ok(Response::new(to_proto(v))),
            None => Err(Status::not_found(format!("no policy version {n}"))),
        }
    }

    async fn node_status(
        &self,
        _: Request<NodeStatusRequest>,
    ) -> Result<Response<NodeStatusResponse>, Status> {
        Ok(Response::new(NodeStatusResponse {
            nodes: self.cp.fleet.snapshot(),
        }))
    }

    type WatchStatusStream = ReceiverStream<Result<NodeStatusResponse, Status>>;

    async fn watch_status(
        &self,
        _: Request<NodeStatusRequest>,
    ) -> Result<Response<Self::WatchStatusStream>, Status> {
        let cp = self.cp.clone();
        let Some(tracked) = cp.drain.track() else {
            return Err(Status::unavailable(
                "the control plane is shutting down; retry with backoff",
            ));
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
        let server = request.into_inner().server;
        let buckets = self.cp.quota.list(&server)?;
        Ok(Response::new(ListLimitsResponse { buckets }))
    }
}
