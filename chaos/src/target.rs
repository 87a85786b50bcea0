//! An existing deployment as the target of a scenario (`--target`).
//!
//! The harness cannot kill or cut off processes it did not start, so each
//! fault a scenario uses is carried out by an operator-supplied **hook**: a
//! shell command (`sh -c`) given as `--hook FAULT=COMMAND` for the start and
//! `--hook FAULT.heal=COMMAND` for the heal, e.g.
//!
//! ```text
//! --hook 'kill=ssh {region}.internal sudo systemctl kill -s KILL meridian'
//! --hook 'kill.heal=ssh {region}.internal sudo systemctl start meridian'
//! ```
//!
//! Placeholders: `{id}`, `{region}`, `{admin}`, `{proxy}` of the node the
//! step hits, and the step's `{cut}`, `{delay}` (ms), `{jitter}` (ms),
//! `{loss}` (0..1) and `{offset}` (seconds). A hook that exits non-zero, or
//! runs longer than [`HOOK_TIMEOUT`], stops the run. Before anything is
//! sent, every hook the scenario needs must be given.
//!
//! The nodes are read from `GET /v1/cluster` of the given admin address
//! (every member's `admin` and `proxy`). Config writes add one marker route
//! (`chaos-wN`, path `/chaos/wN`, on the first upstream) to the
//! configuration in force, and the configuration read at the start is put
//! back at the end. Revocations need `--consumer NAME` (keys are created
//! for it, then revoked) and `--probe-path PATH` (a path whose route
//! requires an API key), else the run makes config writes only. Admin calls
//! carry `MERIDIAN_TOKEN` as a bearer token when it is set.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::client::Client;
use crate::scenario::{Cut, Fault, Scenario};

/// Longest a hook may run.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(30);

/// How to reach and disturb an existing deployment.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// The admin address (`host:port`) of any node.
    pub admin: String,
    /// Hooks by name: `kill`, `kill.heal`, `partition`, ….
    pub hooks: BTreeMap<String, String>,
    /// The consumer to create (and revoke) keys for.
    pub consumer: Option<String>,
    /// A proxy path whose route requires an API key.
    pub probe_path: Option<String>,
    /// Paths for the load instead of the scenario's routes.
    pub routes: Vec<String>,
}

/// A node of the deployment.
#[derive(Clone, Debug)]
pub struct Member {
    /// Node id.
    pub id: u64,
    /// Region.
    pub region: String,
    /// Proxy address.
    pub proxy: SocketAddr,
    /// Admin address.
    pub admin: SocketAddr,
}

/// A connected deployment.
#[derive(Debug)]
pub struct Remote {
    /// Its nodes.
    pub members: Vec<Member>,
    /// The configuration in force at the start (secrets redacted; the
    /// admin API keeps the ones in force when it is written back).
    pub original: Value,
    /// The upstream marker routes point at.
    pub upstream: String,
    settings: Settings,
}

/// Parses `NAME=COMMAND` hook arguments.
pub fn parse_hooks(specs: &[String]) -> Result<BTreeMap<String, String>, String> {
    const FAULTS: [&str; 8] = [
        "kill",
        "partition",
        "latency",
        "backend-down",
        "backend-slow",
        "clock",
        "disk-full",
        "jwks-down",
    ];
    let mut hooks = BTreeMap::new();
    for spec in specs {
        let Some((name, command)) = spec.split_once('=') else {
            return Err(format!("--hook ({spec}) must be NAME=COMMAND"));
        };
        let fault = name.strip_suffix(".heal").unwrap_or(name);
        if !FAULTS.contains(&fault) {
            return Err(format!(
                "--hook ({name}) must name a fault ({}), optionally with .heal",
                FAULTS.join(", ")
            ));
        }
        if command.trim().is_empty() {
            return Err(format!("--hook ({name}) has an empty command"));
        }
        hooks.insert(name.to_owned(), command.to_owned());
    }
    Ok(hooks)
}

/// The hooks `scenario` needs that `hooks` lacks.
pub fn missing_hooks(scenario: &Scenario, hooks: &BTreeMap<String, String>) -> Vec<String> {
    let mut missing = Vec::new();
    for step in &scenario.steps {
        let name = step.fault.name();
        for hook in [name.to_owned(), format!("{name}.heal")] {
            if !hooks.contains_key(&hook) && !missing.contains(&hook) {
                missing.push(hook);
            }
        }
    }
    missing
}

/// `base` with one more route, `/chaos/<name>` on `upstream`.
pub fn with_marker(base: &Value, name: &str, upstream: &str) -> Value {
    let mut config = base.clone();
    let route = serde_json::json!({"name": name, "match": {"path": format!("/chaos/{name}")}, "upstream": upstream});
    match config.get_mut("routes").and_then(Value::as_array_mut) {
        Some(routes) => routes.push(route),
        None => config["routes"] = Value::Array(vec![route]),
    }
    config
}

/// Fills a hook's placeholders for `fault` on `member`.
pub fn render(command: &str, fault: &Fault, member: &Member) -> String {
    let (mut cut, mut delay, mut jitter, mut loss, mut offset) =
        (String::new(), 0u128, 0u128, 0.0, 0i64);
    match fault {
        Fault::Partition { cut: c, .. } => {
            cut = match c {
                Cut::Both => "both",
                Cut::Outbound => "outbound",
                Cut::Inbound => "inbound",
            }
            .into();
        }
        Fault::Latency {
            delay: d,
            jitter: j,
            loss: l,
        } => {
            (delay, jitter, loss) = (d.as_millis(), j.as_millis(), *l);
        }
        Fault::BackendSlow { delay: d, .. } => delay = d.as_millis(),
        Fault::Clock { offset: o, .. } => offset = *o,
        Fault::Kill { .. }
        | Fault::BackendDown { .. }
        | Fault::DiskFull { .. }
        | Fault::JwksDown => {}
    }
    command
        .replace("{id}", &member.id.to_string())
        .replace("{region}", &member.region)
        .replace("{admin}", &member.admin.to_string())
        .replace("{proxy}", &member.proxy.to_string())
        .replace("{cut}", &cut)
        .replace("{delay}", &delay.to_string())
        .replace("{jitter}", &jitter.to_string())
        .replace("{loss}", &loss.to_string())
        .replace("{offset}", &offset.to_string())
}

async fn resolve(address: &str) -> anyhow::Result<SocketAddr> {
    tokio::net::lookup_host(address)
        .await
        .with_context(|| format!("resolving {address}"))?
        .next()
        .with_context(|| format!("{address} resolves to no address"))
}

// === impl Remote ===

impl Remote {
    /// Reads the deployment's members and configuration.
    pub async fn connect(admin: &Client, settings: Settings) -> anyhow::Result<Self> {
        let first = resolve(&settings.admin).await?;
        let (status, cluster) = admin
            .get_json(first, "/v1/cluster", Duration::from_secs(5))
            .await
            .with_context(|| format!("GET /v1/cluster on {}", settings.admin))?;
        if status != 200 {
            bail!(
                "GET /v1/cluster on {} answered {status}: {cluster}",
                settings.admin
            );
        }
        let mut members = Vec::new();
        for m in cluster["members"].as_array().into_iter().flatten() {
            let id = m["id"].as_u64().context("a member without an id")?;
            let (Some(admin_addr), Some(proxy)) = (m["admin"].as_str(), m["proxy"].as_str()) else {
                bail!("member {id} does not list its admin and proxy addresses in /v1/cluster");
            };
            members.push(Member {
                id,
                region: m["region"].as_str().unwrap_or_default().to_owned(),
                proxy: resolve(proxy).await?,
                admin: resolve(admin_addr).await?,
            });
        }
        if members.len() < 3 {
            bail!(
                "the deployment at {} has {} member(s); scenarios need 3 or more",
                settings.admin,
                members.len()
            );
        }
        let (status, config) = admin
            .get_json(first, "/v1/config", Duration::from_secs(5))
            .await?;
        if status != 200 {
            bail!("GET /v1/config answered {status}: {config}");
        }
        let original = config["config"].clone();
        let upstream = original["upstreams"]
            .as_object()
            .and_then(|u| u.keys().next().cloned())
            .context("the configuration in force has no upstream for the marker routes")?;
        Ok(Self {
            members,
            original,
            upstream,
            settings,
        })
    }

    /// The member with id `id`.
    pub fn member(&self, id: u64) -> anyhow::Result<&Member> {
        self.members
            .iter()
            .find(|m| m.id == id)
            .with_context(|| format!("the deployment has no node {id}"))
    }

    /// The consumer keys are made for, when given.
    pub fn consumer(&self) -> Option<&str> {
        self.settings.consumer.as_deref()
    }

    /// The path revoked keys are tried on, when given.
    pub fn probe_path(&self) -> Option<&str> {
        self.settings.probe_path.as_deref()
    }

    /// The load's paths, when given.
    pub fn routes(&self) -> &[String] {
        &self.settings.routes
    }

    /// Runs hook `name` for `fault` on node `id`; returns what happened.
    pub async fn hook(&self, name: &str, fault: &Fault, id: u64) -> anyhow::Result<String> {
        let template = self
            .settings
            .hooks
            .get(name)
            .with_context(|| format!("no --hook {name}=…"))?;
        let command = render(template, fault, self.member(id)?);
        let run = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&command)
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(HOOK_TIMEOUT, run)
            .await
            .with_context(|| format!("hook {name} ({command}) ran longer than 30s"))?
            .with_context(|| format!("running hook {name} ({command})"))?;
        if !output.status.success() {
            bail!(
                "hook {name} ({command}) failed with {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(format!("hook {name}: `{command}` exited 0"))
    }

    /// Puts the configuration read at the start back.
    pub async fn restore(&self, admin: &Client) -> anyhow::Result<()> {
        let member = &self.members[0];
        let answer = admin
            .call(
                http::Method::PUT,
                member.admin,
                "/v1/config",
                &[],
                Some(self.original.to_string().into_bytes()),
                Duration::from_secs(10),
            )
            .await?;
        if answer.status != 200 {
            bail!(
                "restoring the original configuration: {} {}",
                answer.status,
                answer.message()
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
