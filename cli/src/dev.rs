//! `meridian dev`: one node on the embedded demo configuration, with the
//! demo backends running inside the process, and a printed quick start.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use node::config::RawConfig;
use raft::model::GatewayConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::{demo, run};

/// The demo gateway configuration, with `{echo}` and `{users}` placeholders.
const GATEWAY: &str = include_str!("dev/gateway.yaml");

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Proxy listener.
    #[arg(long, default_value = "127.0.0.1:8080")]
    proxy: SocketAddr,
    /// Admin listener.
    #[arg(long, default_value = "127.0.0.1:9080")]
    admin: SocketAddr,
    /// Where the demo backends listen (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    backends: SocketAddr,
    /// Access log: stdout, off or a file.
    #[arg(long, default_value = "stdout")]
    access_log: String,
}

pub(crate) fn main(args: Args) -> ExitCode {
    run::init_tracing("info");
    let result = run::runtime(0).and_then(|runtime| runtime.block_on(dev(args)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("meridian dev: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dev(args: Args) -> anyhow::Result<()> {
    let tasks = TaskTracker::new();
    let stop = CancellationToken::new();
    let echo = demo::echo(args.backends, &tasks, &stop)
        .await
        .context("starting the echo backend")?;
    let users = demo::users(args.backends, &tasks, &stop)
        .await
        .context("starting the users backend")?;
    let gateway = GATEWAY
        .replace("{echo}", &echo.to_string())
        .replace("{users}", &users.to_string());
    let gateway = GatewayConfig::parse(&gateway)
        .map_err(|e| anyhow::anyhow!("embedded configuration: {e}"))?;

    let data = tempfile::tempdir().context("creating a data directory")?;
    let mut raw = RawConfig {
        region: "dev".into(),
        data_dir: data.path().to_owned(),
        ..RawConfig::default()
    };
    raw.listen.peer = "127.0.0.1:0".into();
    raw.listen.proxy = args.proxy.to_string();
    raw.listen.admin = args.admin.to_string();
    raw.log.access_log = args.access_log;
    raw.shutdown.grace_period = std::time::Duration::from_secs(5);
    let config = raw.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let app = node::App::build(config, Some(gateway)).await?;
    print_quick_start(app.proxy_addr(), app.admin_addr(), echo, users);
    app.run(node::shutdown::signal()).await;
    stop.cancel();
    tasks.close();
    tasks.wait().await;
    Ok(())
}

fn print_quick_start(proxy: SocketAddr, admin: SocketAddr, echo: SocketAddr, users: SocketAddr) {
    eprintln!(
        r#"
Meridian dev node is up (one region, "dev").

  proxy   http://{proxy}     (HTTP/1.1 and h2c)
  admin   http://{admin}     (/healthz /readyz /metrics /v1/config)
  echo    http://{echo}      (demo backend)
  users   http://{users}     (demo backend)

Try:
  curl -s http://{proxy}/echo/hello?lang=en
  curl -s http://{proxy}/api/v2/users/1
  curl -si http://{proxy}/api/v1/users/1                # deprecated: Deprecation, Sunset, Link
  curl -s -H 'X-API-Version: 1' http://{proxy}/api/users
  curl -s -H 'Accept: application/vnd.meridian.v1+json' http://{proxy}/api/users/2
  curl -si http://{proxy}/api/v9/users                  # unknown version: served by v2
  curl -s -X POST -d '{{"name":"Barbara Liskov"}}' http://{proxy}/api/v2/users
  curl -s --http2-prior-knowledge http://{proxy}/echo/h2
  curl -s http://{proxy}/nowhere                        # 404, JSON error body
  curl -s http://{admin}/metrics | grep meridian_requests_total
  curl -s http://{admin}/v1/config

Ctrl-C drains and stops.
"#
    );
}
