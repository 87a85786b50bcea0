//! Commands that change or read the replicated state through the admin
//! API: `apply`, `config get|history|diff|rollback`, `key create|revoke`,
//! `revoke jwt`. Every write prints its commit index; `--wait` returns only
//! when every reachable node has applied it.

use std::path::PathBuf;

use anyhow::Context;
use http::Method;
use serde_json::{Value, json};

use crate::admin::Target;
use crate::run;

#[derive(clap::Args)]
pub(crate) struct Apply {
    /// The gateway configuration (YAML or JSON).
    #[arg(long, short = 'f')]
    file: PathBuf,
    /// Return when every reachable node has applied it.
    #[arg(long)]
    wait: bool,
    #[command(flatten)]
    target: Target,
}

#[derive(clap::Subcommand)]
pub(crate) enum Config {
    /// Validate a gateway configuration (or a node.toml) offline; prints every error.
    Check {
        /// The gateway.yaml (or .json) file, or a node.toml (by its .toml extension).
        file: PathBuf,
    },
    /// Print the configuration in force.
    Get {
        /// A version from the history instead.
        #[arg(long)]
        version: Option<u64>,
        #[command(flatten)]
        target: Target,
    },
    /// List the last configuration versions.
    History {
        #[command(flatten)]
        target: Target,
    },
    /// Show what changed between two versions (default: the last two).
    Diff {
        /// The older version.
        from: Option<u64>,
        /// The newer version (default: current).
        to: Option<u64>,
        #[command(flatten)]
        target: Target,
    },
    /// Make an earlier version current again (as a new version).
    Rollback {
        /// The version to restore.
        version: u64,
        /// Return when every reachable node has applied it.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(clap::Subcommand)]
pub(crate) enum Key {
    /// Create an API key for a consumer; the key is printed once.
    Create {
        /// The consumer (declared in the gateway configuration).
        #[arg(long)]
        consumer: String,
        /// Lifetime, e.g. 90d (default: no expiry).
        #[arg(long)]
        ttl: Option<humantime::Duration>,
        /// Return when every reachable node has applied it.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Revoke an API key by id.
    Revoke {
        /// The key id.
        id: String,
        /// Return when every reachable node has applied it.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(clap::Subcommand)]
pub(crate) enum Revoke {
    /// Revoke JWTs by `jti`, or every token of a subject issued before now.
    Jwt {
        /// A token id.
        #[arg(long, conflicts_with = "sub", required_unless_present = "sub")]
        jti: Option<String>,
        /// A subject.
        #[arg(long)]
        sub: Option<String>,
        /// How long the revoked tokens could still be valid (default 24h).
        #[arg(long)]
        ttl: Option<humantime::Duration>,
        /// Return when every reachable node has applied it.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Revoke a certificate by serial (hex): a client certificate for the
    /// admin API or the proxy's mTLS routes. Node certificates are revoked
    /// by `cluster leave`.
    Cert {
        /// The serial number, hex (colons allowed).
        #[arg(long)]
        serial: String,
        /// Return when every reachable node has applied it.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        target: Target,
    },
}

fn wait_query(wait: bool) -> &'static str {
    if wait { "?wait=all" } else { "" }
}

fn report(answer: &Value) {
    if let Some(index) = answer["index"].as_u64() {
        println!("committed at index {index}");
    }
    if let Some(applied) = answer["applied"].as_object() {
        for (node, index) in applied {
            match index.as_u64() {
                Some(index) => println!("  node {node}: applied {index}"),
                None => println!("  node {node}: unreachable"),
            }
        }
    }
}

pub(crate) fn apply(args: Apply) -> anyhow::Result<()> {
    let text =
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    run::block_on(async move {
        let answer = args
            .target
            .call(
                Method::PUT,
                &format!("/v1/config{}", wait_query(args.wait)),
                Some(text),
            )
            .await?;
        println!("configuration version {} in force", answer["version"]);
        report(&answer);
        Ok(())
    })
}

async fn version_text(target: &Target, version: Option<u64>) -> anyhow::Result<(u64, String)> {
    let answer = match version {
        Some(version) => {
            target
                .call(Method::GET, &format!("/v1/config/versions/{version}"), None)
                .await?
        }
        None => target.call(Method::GET, "/v1/config", None).await?,
    };
    let version = answer["version"].as_u64().unwrap_or(0);
    Ok((version, serde_json::to_string_pretty(&answer["config"])?))
}

pub(crate) fn config(command: Config) -> anyhow::Result<()> {
    run::block_on(async move {
        match command {
            Config::Check { file } => {
                crate::check::main(&file);
            }
            Config::Get { version, target } => {
                let (_, text) = version_text(&target, version).await?;
                println!("{text}");
            }
            Config::History { target } => {
                let answer = target.call(Method::GET, "/v1/config/history", None).await?;
                println!("{:<8} {:<26} {:<8} AUTHOR", "VERSION", "TIME", "INDEX");
                for version in answer["versions"].as_array().into_iter().flatten() {
                    let at = version["at"].as_u64().unwrap_or(0);
                    let time = humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + std::time::Duration::from_millis(at),
                    );
                    println!(
                        "{:<8} {:<26} {:<8} {}",
                        version["version"],
                        time.to_string(),
                        version["index"],
                        version["author"].as_str().unwrap_or("")
                    );
                }
            }
            Config::Diff { from, to, target } => {
                let (to_version, new) = version_text(&target, to).await?;
                let from = from.unwrap_or(to_version.saturating_sub(1));
                let (from_version, old) = version_text(&target, Some(from)).await?;
                use std::io::Write as _;
                let mut out = std::io::stdout().lock();
                let diff = similar::TextDiff::from_lines(&old, &new);
                // Stop quietly when the reader goes away (e.g. `| head`).
                let _ = writeln!(out, "--- version {from_version}\n+++ version {to_version}");
                for change in diff.iter_all_changes() {
                    let sign = match change.tag() {
                        similar::ChangeTag::Delete => "-",
                        similar::ChangeTag::Insert => "+",
                        similar::ChangeTag::Equal => " ",
                    };
                    if write!(out, "{sign}{change}").is_err() {
                        break;
                    }
                }
            }
            Config::Rollback {
                version,
                wait,
                target,
            } => {
                let body = serde_json::to_vec(&json!({"version": version}))?;
                let answer = target
                    .call(
                        Method::POST,
                        &format!("/v1/config/rollback{}", wait_query(wait)),
                        Some(body),
                    )
                    .await?;
                println!("version {version} restored");
                report(&answer);
            }
        }
        Ok(())
    })
}

pub(crate) fn key(command: Key) -> anyhow::Result<()> {
    run::block_on(async move {
        match command {
            Key::Create {
                consumer,
                ttl,
                wait,
                target,
            } => {
                let body = match ttl {
                    Some(ttl) => {
                        json!({"ttl": humantime::format_duration(ttl.into()).to_string().replace(' ', "")})
                    }
                    None => json!({}),
                };
                let path = format!("/v1/consumers/{consumer}/keys{}", wait_query(wait));
                let answer = target
                    .call(Method::POST, &path, Some(serde_json::to_vec(&body)?))
                    .await?;
                println!("key id: {}", answer["id"].as_str().unwrap_or(""));
                println!("key:    {}", answer["key"].as_str().unwrap_or(""));
                println!("(the key is shown once; only its hash is stored)");
                report(&answer);
            }
            Key::Revoke { id, wait, target } => {
                let answer = target
                    .call(
                        Method::DELETE,
                        &format!("/v1/keys/{id}{}", wait_query(wait)),
                        None,
                    )
                    .await?;
                println!("key {id} revoked");
                report(&answer);
            }
        }
        Ok(())
    })
}

pub(crate) fn revoke(command: Revoke) -> anyhow::Result<()> {
    let (mut body, ttl, wait, target) = match command {
        Revoke::Jwt {
            jti,
            sub,
            ttl,
            wait,
            target,
        } => {
            let body = match (jti, sub) {
                (Some(jti), _) => json!({"jti": jti}),
                (None, Some(sub)) => json!({"sub": sub}),
                (None, None) => anyhow::bail!("give --jti or --sub"),
            };
            (body, ttl, wait, target)
        }
        Revoke::Cert {
            serial,
            wait,
            target,
        } => (
            json!({"serial": serial.replace(':', "")}),
            None,
            wait,
            target,
        ),
    };
    run::block_on(async move {
        if let Some(ttl) = ttl {
            body["ttl"] = json!(
                humantime::format_duration(ttl.into())
                    .to_string()
                    .replace(' ', "")
            );
        }
        let answer = target
            .call(
                Method::POST,
                &format!("/v1/revocations{}", wait_query(wait)),
                Some(serde_json::to_vec(&body)?),
            )
            .await?;
        println!("revoked until {}", answer["expires_at"]);
        report(&answer);
        Ok(())
    })
}
