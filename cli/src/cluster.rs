//! `meridian cluster init|join|token|status|leave`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use http::Method;
use node::config::RawConfig;
use node::pki::{self, Ca, Identity};
use serde_json::Value;

use crate::admin::Target;
use crate::run;

#[derive(clap::Subcommand)]
pub(crate) enum Command {
    /// Create the cluster CA and this node's identity, and print a join token.
    Init {
        /// The founding node's node.toml.
        #[arg(long, short)]
        config: PathBuf,
        /// How long the printed join token stays valid.
        #[arg(long, default_value = "1h")]
        token_ttl: humantime::Duration,
    },
    /// Join a cluster with a one-time token, then run the node.
    Join {
        /// The joining node's node.toml.
        #[arg(long, short)]
        config: PathBuf,
        /// The token from `cluster init` or `cluster token`.
        #[arg(long, env = "MERIDIAN_JOIN_TOKEN", hide_env_values = true)]
        token: String,
    },
    /// Print a new one-time join token (from a running member).
    Token {
        /// How long the token stays valid.
        #[arg(long, default_value = "1h")]
        ttl: humantime::Duration,
        #[command(flatten)]
        target: Target,
    },
    /// Members, regions, leader, term, commit and applied index, lag, and
    /// the overshoot bound of each global rate limit.
    Status {
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Issue a client certificate for the admin API (`admin.tls = "mutual"`)
    /// on a node that holds the cluster CA key (the founding node).
    Cert {
        /// That node's node.toml.
        #[arg(long, short)]
        config: PathBuf,
        /// Who the certificate is for (its CN and SAN URI).
        #[arg(long)]
        name: String,
        /// Directory to write `<name>.pem`, `<name>.key` and `ca.pem` to.
        #[arg(long)]
        out: PathBuf,
    },
    /// Remove a node from the cluster (default: the node --admin points at).
    Leave {
        /// The node to remove.
        #[arg(long)]
        id: Option<u64>,
        #[command(flatten)]
        target: Target,
    },
}

pub(crate) fn main(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Init { config, token_ttl } => init(&config, token_ttl.into()),
        Command::Cert { config, name, out } => client_cert(&config, &name, &out),
        Command::Join { config, token } => run::serve_file(&config, None, Some(token)),
        Command::Token { ttl, target } => run::block_on(async move {
            let ttl = humantime::format_duration(ttl.into())
                .to_string()
                .replace(' ', "");
            let answer = target
                .call(Method::POST, &format!("/v1/cluster/tokens?ttl={ttl}"), None)
                .await?;
            println!("{}", answer["token"].as_str().unwrap_or_default());
            Ok(())
        }),
        Command::Status { json, target } => run::block_on(async move {
            let status = target.call(Method::GET, "/v1/cluster", None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_status(&status);
            }
            Ok(())
        }),
        Command::Leave { id, target } => run::block_on(async move {
            let id = match id {
                Some(id) => id,
                None => target.call(Method::GET, "/v1/cluster", None).await?["id"]
                    .as_u64()
                    .context("the node did not say its id")?,
            };
            target
                .call(Method::DELETE, &format!("/v1/cluster/members/{id}"), None)
                .await?;
            println!("node {id} removed from the cluster; its certificate is revoked");
            Ok(())
        }),
    }
}

fn client_cert(config: &std::path::Path, name: &str, out: &std::path::Path) -> anyhow::Result<()> {
    let config = RawConfig::load(config)?
        .validate()
        .map_err(|e| anyhow::anyhow!("{}: {e}", config.display()))?;
    let identity = Identity::load(&config.data_dir)?;
    let Some(ca) = identity.authority else {
        bail!(
            "{} holds no cluster CA key; run this on the founding node",
            config.data_dir.display()
        );
    };
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        bail!("--name ({name:?}) must be letters, digits, '-', '_' or '.'");
    }
    let cert = ca.issue_client(name)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    pki::write_private(&out.join(format!("{name}.pem")), cert.cert_pem.as_bytes())?;
    pki::write_private(&out.join(format!("{name}.key")), cert.key_pem.as_bytes())?;
    pki::write_private(&out.join("ca.pem"), ca.cert_pem.as_bytes())?;
    let serial = {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        CertificateDer::from_pem_slice(cert.cert_pem.as_bytes())
            .ok()
            .and_then(|der| node::tls::ClientIdentity::from_der(&der))
            .map(|identity| identity.serial)
            .unwrap_or_default()
    };
    println!("Client certificate for {name} in {}.", out.display());
    println!("Serial (for `meridian revoke cert --serial`): {serial}");
    println!("Use it with:");
    println!("  export MERIDIAN_CA={}", out.join("ca.pem").display());
    println!(
        "  export MERIDIAN_CERT={}",
        out.join(format!("{name}.pem")).display()
    );
    println!(
        "  export MERIDIAN_KEY={}",
        out.join(format!("{name}.key")).display()
    );
    println!("  export MERIDIAN_ADMIN=https://<node>:9080");
    Ok(())
}

fn init(path: &std::path::Path, ttl: Duration) -> anyhow::Result<()> {
    let raw = RawConfig::load(path)?;
    let config = raw
        .validate()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    if Identity::exists(&config.data_dir) {
        bail!(
            "{} already holds a node identity",
            config.data_dir.display()
        );
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    let ca = Ca::generate(&config.region)?;
    let cert = ca.issue(config.id, &config.region)?;
    Identity::save(&config.data_dir, &ca, true, &cert, &pki::secret())?;
    std::fs::write(pki::dir(&config.data_dir).join("founding"), b"")?;
    let identity = Identity::load(&config.data_dir)?;
    let peer = format!("{}:{}", config.listen.advertise, config.listen.peer.port());
    let token = node::join::Token::issue(
        &identity,
        &ca.cert_pem,
        vec![(config.id, peer)],
        ttl,
        node::cluster::now_ms(),
    );
    println!(
        "Cluster initialised: node {} in region {}.",
        config.id, config.region
    );
    println!(
        "CA and node certificate: {}",
        pki::dir(&config.data_dir).display()
    );
    println!();
    println!("Start this node:");
    println!("  meridian node run --config {}", path.display());
    println!();
    println!(
        "Join another node (valid {}, once):",
        humantime::format_duration(ttl)
    );
    println!(
        "  meridian cluster join --config node.toml --token {}",
        token.encode()
    );
    Ok(())
}

fn print_status(status: &Value) {
    println!(
        "node {} ({}) · leader {} · term {} · commit {} · applied {} · config v{}",
        status["id"],
        status["region"].as_str().unwrap_or(""),
        status["leader"],
        status["term"],
        status["commit"],
        status["applied"],
        status["config_version"],
    );
    println!();
    println!(
        "{:<6} {:<14} {:<8} {:<22} {:<22} {:>8} {:>6}",
        "ID", "REGION", "ROLE", "PEER", "ADMIN", "APPLIED", "LAG"
    );
    for member in status["members"].as_array().into_iter().flatten() {
        let role = if member["leader"] == true {
            "leader"
        } else {
            member["role"].as_str().unwrap_or("")
        };
        let applied = member["applied"]
            .as_u64()
            .map_or("?".to_owned(), |a| a.to_string());
        let lag = member["lag"]
            .as_u64()
            .map_or("unreachable".to_owned(), |l| l.to_string());
        println!(
            "{:<6} {:<14} {:<8} {:<22} {:<22} {:>8} {:>6}",
            member["id"].to_string(),
            member["region"].as_str().unwrap_or(""),
            role,
            member["peer"].as_str().unwrap_or(""),
            member["admin"].as_str().unwrap_or(""),
            applied,
            lag,
        );
    }
    let limits = status["global_limits"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !limits.is_empty() {
        println!();
        println!(
            "{:<32} {:>12} {:>10} {:>10} {:>12}",
            "GLOBAL LIMIT", "RATE (/s)", "DELAY", "BOUND", "UNREACHABLE"
        );
        for limit in limits {
            println!(
                "{:<32} {:>12.1} {:>8.1}ms {:>10.1} {:>12}",
                limit["limit"].as_str().unwrap_or(""),
                limit["rate"].as_f64().unwrap_or(0.0),
                limit["delay"].as_f64().unwrap_or(0.0) * 1000.0,
                limit["bound"].as_f64().unwrap_or(0.0),
                limit["unreachable"].as_u64().unwrap_or(0),
            );
        }
    }
}
