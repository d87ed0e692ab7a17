//! `tollgate policy push | versions | show | diff`: the policy versions a
//! control plane stores.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use serde_json::Value;
use tollgate_proto::v1::{GetVersionRequest, ListVersionsRequest, PushPolicyRequest};

use super::fleet::{runtime, time};
use super::remote::{Admin, Answer, Remote};
use crate::diff::diff;

#[derive(Debug, Args)]
pub struct PushArgs {
    /// The policy file (a document or a bundle; with --server, a document).
    file: PathBuf,
    /// Place the file in the latest bundle as this server's policy.
    #[arg(long)]
    server: Option<String>,
    /// Why: kept with the version.
    #[arg(short, long, default_value = "")]
    message: String,
    /// Store the version for a rollout (`tollgate rollout start --version
    /// N`) without sending it to any node.
    #[arg(long)]
    stage: bool,
    /// Push even while a rollout is active; that rollout is aborted.
    #[arg(long)]
    force: bool,
}

pub fn push(remote: &Remote, args: &PushArgs) -> anyhow::Result<ExitCode> {
    let content = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    runtime()?.block_on(async {
        let resp = remote
            .connect()
            .await?
            .push_policy(PushPolicyRequest {
                content,
                server: args.server.clone().unwrap_or_default(),
                message: args.message.clone(),
                stage: args.stage,
                force: args.force,
            })
            .await
            .answer("push failed")?
            .into_inner();
        if !resp.accepted {
            let shown = args.file.display();
            for e in &resp.errors {
                let at = if e.pointer.is_empty() {
                    "/"
                } else {
                    &e.pointer
                };
                println!("{shown}: {at}: {}", e.message);
            }
            return Ok(ExitCode::from(1));
        }
        if resp.created && args.stage {
            println!(
                "staged version {0}; roll it out with `tollgate rollout start --version {0}`",
                resp.version
            );
        } else if resp.created {
            println!("pushed version {}", resp.version);
        } else {
            println!("unchanged: version {}", resp.version);
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub fn versions(remote: &Remote) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let list = remote
            .connect()
            .await?
            .list_versions(ListVersionsRequest {})
            .await
            .answer("cannot list versions")?
            .into_inner();
        println!("{:<8} {:<14} {:<20} MESSAGE", "VERSION", "HASH", "CREATED");
        for v in list.versions {
            let hash = v.content_hash.get(..12).unwrap_or(&v.content_hash);
            println!(
                "{:<8} {:<14} {:<20} {}",
                v.version,
                hash,
                time(v.created_at),
                v.message
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}

async fn fetch(client: &mut Admin, version: u64) -> anyhow::Result<Vec<u8>> {
    Ok(client
        .get_version(GetVersionRequest { version })
        .await
        .answer(&format!("cannot get version {version}"))?
        .into_inner()
        .content)
}

pub fn show(remote: &Remote, version: u64) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let content = fetch(&mut remote.connect().await?, version).await?;
        print!("{}", String::from_utf8_lossy(&content));
        Ok(ExitCode::SUCCESS)
    })
}

pub fn diff_versions(remote: &Remote, a: u64, b: u64) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let mut client = remote.connect().await?;
        let parse = |n: u64, bytes: Vec<u8>| -> anyhow::Result<Value> {
            serde_json::from_slice(&bytes).with_context(|| format!("version {n} is not JSON"))
        };
        let va = parse(a, fetch(&mut client, a).await?)?;
        let vb = parse(b, fetch(&mut client, b).await?)?;
        let changes = diff(&va, &vb);
        if changes.is_empty() {
            println!("no rule changed between {a} and {b}");
        }
        for (pointer, change) in changes {
            println!("{change} {pointer}");
        }
        Ok(ExitCode::SUCCESS)
    })
}
