//! `meridian dev`: a real cluster on loopback — one node per region (three
//! by default), each with its own ports and data directory, raft over QUIC
//! between them — with demo backends inside the process and a printed quick
//! start that shows a configuration change and a key revocation reaching
//! every region.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use node::config::RawConfig;
use raft::model::GatewayConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::{demo, run};

/// The demo gateway configuration, with `{region_targets}`, `{regions}` and `{users}` placeholders.
const GATEWAY: &str = include_str!("dev/gateway.yaml");

/// Region names for the dev cluster.
const REGIONS: [&str; 5] = ["eu-west", "us-east", "ap-south", "sa-east", "af-south"];

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Number of regions (one node each).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=9))]
    regions: u64,
    /// Proxy listener of the first region; the others take the next ports
    /// (port 0: any free port for every region).
    #[arg(long, default_value = "127.0.0.1:8080")]
    proxy: SocketAddr,
    /// Admin listener of the first region; the others take the next ports.
    #[arg(long, default_value = "127.0.0.1:9080")]
    admin: SocketAddr,
    /// Where the demo backends listen (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    backends: SocketAddr,
    /// Access log: stdout, off or a file.
    #[arg(long, default_value = "off")]
    access_log: String,
}

pub(crate) fn main(args: Args) -> ExitCode {
    run::init_tracing("warn");
    let result = run::runtime(0).and_then(|runtime| runtime.block_on(dev(args)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("meridian dev: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn region(i: u64) -> String {
    REGIONS
        .get(i as usize)
        .map_or_else(|| format!("region-{}", i + 1), |r| (*r).to_owned())
}

/// `base` with its port moved up by `offset` (port 0 stays 0).
fn nth(base: SocketAddr, offset: u64) -> SocketAddr {
    let mut address = base;
    if base.port() != 0 {
        address.set_port(base.port() + offset as u16);
    }
    address
}

struct Region {
    name: String,
    proxy: SocketAddr,
    admin: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn dev(args: Args) -> anyhow::Result<()> {
    let tasks = TaskTracker::new();
    let stop = CancellationToken::new();
    let mut echoes = Vec::new();
    let mut names = Vec::new();
    for i in 0..args.regions {
        let echo = demo::echo(args.backends, &region(i), &tasks, &stop)
            .await
            .context("starting an echo backend")?;
        echoes.push(format!("{}: [\"{echo}\"]", region(i)));
        names.push(region(i));
    }
    let users = demo::users(args.backends, &tasks, &stop)
        .await
        .context("starting the users backend")?;
    let gateway = GATEWAY
        .replace("{region_targets}", &format!("{{ {} }}", echoes.join(", ")))
        .replace("{regions}", &names.join(", "))
        .replace("{users}", &format!("\"{users}\""));
    let gateway = GatewayConfig::parse(&gateway)
        .map_err(|e| anyhow::anyhow!("embedded configuration: {e}"))?;

    let data = tempfile::tempdir().context("creating a data directory")?;
    let second = second_version(&gateway, data.path())?;
    let mut regions: Vec<Region> = Vec::new();
    let mut founder: Option<std::sync::Arc<node::Gateway>> = None;
    for i in 0..args.regions {
        let mut raw = RawConfig {
            id: i + 1,
            region: region(i),
            data_dir: data.path().join(region(i)),
            ..RawConfig::default()
        };
        raw.listen.peer = "127.0.0.1:0".into();
        raw.listen.proxy = nth(args.proxy, i).to_string();
        raw.listen.admin = nth(args.admin, i).to_string();
        raw.log.access_log = if args.access_log == "stdout" || args.access_log == "off" {
            args.access_log.clone()
        } else {
            format!("{}.{}", args.access_log, region(i))
        };
        raw.shutdown.grace_period = Duration::from_secs(5);
        raw.raft.heartbeat = Duration::from_millis(100);
        raw.raft.election_timeout_min = Duration::from_millis(500);
        raw.raft.election_timeout_max = Duration::from_millis(1000);
        let config = raw.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
        // Each joining region gets its own one-time token from the founder.
        let app = match &founder {
            None => node::App::build(config, Some(gateway.clone())).await?,
            Some(founder) => {
                let token = founder
                    .cluster()
                    .token(Duration::from_secs(600))
                    .context("the founding node cannot issue join tokens")?;
                node::App::join(config, &token.encode()).await?
            }
        };
        if founder.is_none() {
            founder = Some(app.gateway());
        }
        let (proxy, admin) = (app.proxy_addr(), app.admin_addr());
        let node_stop = CancellationToken::new();
        let task = tokio::spawn(app.run(node_stop.clone().cancelled_owned()));
        regions.push(Region {
            name: region(i),
            proxy,
            admin,
            stop: node_stop,
            task,
        });
    }
    print_quick_start(&regions, &second, users);
    node::shutdown::signal().await;
    for region in &regions {
        region.stop.cancel();
    }
    for region in regions {
        let _ = region.task.await;
    }
    stop.cancel();
    tasks.close();
    tasks.wait().await;
    Ok(())
}

/// Writes a second version of the demo configuration (one more route) for
/// the quick start's `apply` example.
fn second_version(
    gateway: &GatewayConfig,
    dir: &std::path::Path,
) -> anyhow::Result<std::path::PathBuf> {
    let mut next = gateway.clone();
    let route: raft::model::Route = serde_json::from_value(serde_json::json!({
        "name": "greeting",
        "match": { "path": "/greeting" },
        "upstream": "echo"
    }))?;
    next.routes.push(route);
    let path = dir.join("gateway-v2.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&next)?)?;
    Ok(path)
}

fn print_quick_start(regions: &[Region], second: &std::path::Path, users: SocketAddr) {
    let first = &regions[0];
    let last = regions.last().unwrap_or(first);
    let (p, a) = (first.proxy, first.admin);
    let (lp, la) = (last.proxy, last.admin);
    let mut table = String::new();
    for (i, region) in regions.iter().enumerate() {
        table.push_str(&format!(
            "  {:<10} node {}   proxy http://{}   admin http://{}\n",
            region.name,
            i + 1,
            region.proxy,
            region.admin
        ));
    }
    eprintln!(
        r#"
Meridian dev cluster: {n} region(s) on loopback, raft over QUIC between them.

{table}  demo backends: one echo service per region (each region proxies to its own,
  falling back to the next region's), users at http://{users}

Try the data plane:
  curl -si http://{p}/echo/hello?lang=en            # x-meridian-region: the region that served
  curl -s http://{p}/api/v2/users/1
  curl -si http://{p}/api/v1/users/1                # deprecated: Deprecation, Sunset, Link
  curl -s -H 'X-API-Version: 1' http://{p}/api/users
  curl -si http://{p}/api/v9/users                  # unknown version: served by v2
  curl -s --http2-prior-knowledge http://{p}/echo/h2
  curl -s http://{p}/nowhere                        # 404, JSON error body
  for i in 1 2 3 4 5 6; do curl -s -o /dev/null -w '%{{http_code}} ' http://{p}/limited/x; done   # 5 x 200, then 429
  curl -si http://{p}/limited/x | grep -i ratelimit  # RateLimit-Policy, RateLimit

A configuration change reaches every region:
  meridian cluster status --admin http://{a}
  meridian apply -f {second} --wait --admin http://{la}
  curl -s http://{lp}/greeting

A key works everywhere, and its revocation reaches every region:
  meridian key create --consumer demo --wait --admin http://{a}
  curl -s -H 'X-API-Key: <key>' http://{lp}/private/hello
  meridian key revoke <key id> --wait --admin http://{la}
  curl -s -H 'X-API-Key: <key>' http://{p}/private/hello   # 401 everywhere now

Metrics: curl -s http://{a}/metrics | grep meridian_
Ctrl-C drains and stops.
"#,
        n = regions.len(),
        second = second.display(),
    );
}
