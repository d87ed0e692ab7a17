//! `tollgate token create | list | revoke`: operator tokens (role admin).

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{Value, json};
use tollgate_proto::v1::{CreateTokenRequest, ListTokensRequest, RevokeTokenRequest, TokenInfo};

use super::fleet::{runtime, time};
use super::remote::{Answer, Remote};

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Issue a token. It is printed once, alone on stdout; nothing keeps it.
    Create {
        /// admin, approver or viewer (each includes the next).
        #[arg(long)]
        role: String,
        /// Unique among live tokens; the audit trail names its holder so.
        #[arg(long)]
        name: String,
    },
    /// Every token, revoked ones included (never their secrets).
    List {
        /// One JSON object per token instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Refuse a token from the next call on.
    Revoke {
        /// A live token's name, or a token's id.
        token: String,
    },
}

pub fn run(cmd: TokenCommand, remote: &Remote) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let mut client = remote.connect().await?;
        match cmd {
            TokenCommand::Create { role, name } => {
                let created = client
                    .create_token(CreateTokenRequest {
                        name: name.clone(),
                        role: role.clone(),
                    })
                    .await
                    .answer("cannot create the token")?
                    .into_inner();
                println!("{}", created.token);
                let id = created.info.map(|i| i.id).unwrap_or_default();
                eprintln!(
                    "created token {name:?} (role {role}, id {id}); it is shown only this once: \
                     keep it in a file (mode 0600) and pass it with --token-file"
                );
            }
            TokenCommand::List { json } => {
                let tokens = client
                    .list_tokens(ListTokensRequest {})
                    .await
                    .answer("cannot list tokens")?
                    .into_inner()
                    .tokens;
                print_tokens(&tokens, json);
            }
            TokenCommand::Revoke { token } => {
                let revoked = client
                    .revoke_token(RevokeTokenRequest { token })
                    .await
                    .answer("cannot revoke the token")?
                    .into_inner();
                println!("revoked token {:?} (id {})", revoked.name, revoked.id);
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn print_tokens(tokens: &[TokenInfo], as_json: bool) {
    if as_json {
        for t in tokens {
            println!("{}", token_json(t));
        }
        return;
    }
    println!(
        "{:<24} {:<9} {:<17} {:<20} {:<24} REVOKED",
        "NAME", "ROLE", "ID", "CREATED", "CREATED BY"
    );
    for t in tokens {
        println!(
            "{:<24} {:<9} {:<17} {:<20} {:<24} {}",
            t.name,
            t.role,
            t.id,
            time(t.created_at),
            t.created_by,
            time(t.revoked_at)
        );
    }
}

fn token_json(t: &TokenInfo) -> Value {
    json!({
        "name": t.name,
        "role": t.role,
        "id": t.id,
        "created_at": time(t.created_at),
        "created_by": t.created_by,
        "revoked_at": (t.revoked_at > 0).then(|| time(t.revoked_at)),
    })
}
