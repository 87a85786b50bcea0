//! One rate-limit decision per algorithm, next to the `governor` crate's
//! keyed limiter (GCRA over a DashMap) as the anchor, measured in the same
//! run; and the bytes each tracked key costs.
//!
//! - `single/<algo>`: one thread, one hot key; `single/<algo>/10k-keys`:
//!   one thread cycling over 10 000 keys.
//! - `two-threads/<algo>/{same-key,distinct-keys}`: two threads deciding at
//!   once; the time is wall time per decision (both threads' decisions
//!   counted), so lower is better and contention shows as a higher number.
//! - Before the timings, the bench prints the memory per tracked key of each
//!   store and of governor: the growth of the resident set while 1 000 000
//!   keys are tracked, each subject measured in a fresh child process
//!   (the bench re-runs itself with `RATELIMIT_MEMORY=<subject>`), with and
//!   without the key's own allocation.
//!
//! - `scope/{local,global,redis}`: one token-bucket decision through
//!   `Limiter::decide`: on this node alone; as a global limit whose key
//!   also holds two peers' counters; or in a real `redis-server` the bench
//!   starts on a free loopback port (skipped when none is installed): the
//!   per-decision cost of each scope (global: target within 1.5× of local;
//!   redis is reported, not targeted).
//! - Before the timings, a table of what each scope admits against the
//!   ideal: three nodes offered 1 000 req/s each against a fixed window of
//!   1 000 per 10 s, the global scope at several sync intervals with 20 ms
//!   one-way latency between nodes. Local and global run the real stores
//!   and batches on virtual time (batches delivered `interval + latency`
//!   later, in order); redis runs three limiters against the real server.
//!   Then the counter traffic: the encoded size of a batch carrying 1 000
//!   changed keys, as bytes per second per peer at each sync interval.
//!
//! Every decision includes reading the clock (ours: `Clock::now`; governor:
//! its default quanta clock).
//!
//! Run: `cargo bench -p node --bench ratelimit -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use criterion::{Criterion, criterion_group};
use governor::{Quota, RateLimiter};
use node::ratelimit::clock::{Clock, SECOND};
use node::ratelimit::fixed_window::{FixedWindow, Window};
use node::ratelimit::leaky_bucket::{self, LeakyBucket};
use node::ratelimit::sliding_counter::SlidingCounter;
use node::ratelimit::sliding_log::SlidingLog;
use node::ratelimit::token_bucket::TokenBucket;
use node::ratelimit::{Counting, Store};

/// Generous enough that the hot key is mostly admitted: the decision's
/// cost, not the refusal's, is measured (both take the same path).
const RATE_PER_SECOND: u32 = 1_000_000;
const BURST: u32 = 1_000;
const KEYS: u64 = 10_000;

fn governor() -> governor::DefaultKeyedRateLimiter<u64> {
    RateLimiter::keyed(
        Quota::per_second(NonZeroU32::new(RATE_PER_SECOND).unwrap())
            .allow_burst(NonZeroU32::new(BURST).unwrap()),
    )
}

fn token_bucket() -> TokenBucket {
    TokenBucket::new(SECOND / u64::from(RATE_PER_SECOND), u64::from(BURST))
}

fn sliding_counter() -> SlidingCounter {
    SlidingCounter::new(u64::from(RATE_PER_SECOND), SECOND)
}

fn sliding_log() -> SlidingLog {
    SlidingLog::new(100, SECOND / 10_000)
}

fn fixed_window() -> FixedWindow {
    FixedWindow::new(u64::from(RATE_PER_SECOND), Window::Fixed(SECOND))
}

/// A decision-making thing under test.
trait Decide: Send + Sync {
    fn decide(&self, key: u64) -> bool;
}

struct Ours<A: Counting> {
    store: Store<A>,
    clock: Clock,
}

impl<A: Counting> Decide for Ours<A> {
    #[inline]
    fn decide(&self, key: u64) -> bool {
        let now = self.clock.now();
        self.store.acquire(&key.to_le_bytes(), now).allowed
    }
}

impl Decide for governor::DefaultKeyedRateLimiter<u64> {
    #[inline]
    fn decide(&self, key: u64) -> bool {
        self.check_key(&key).is_ok()
    }
}

struct Leaky {
    store: Store<LeakyBucket>,
    runtime: leaky_bucket::Runtime,
}

impl Decide for Leaky {
    fn decide(&self, key: u64) -> bool {
        let now = self.runtime.clock.now();
        let queue = self.store.with(&key.to_le_bytes(), now, |_, q| q.clone());
        matches!(
            self.store.algorithm().admit(&queue, now, &self.runtime),
            leaky_bucket::Admission::Now
        )
    }
}

fn ours<A: Counting>(algorithm: A) -> Arc<dyn Decide> {
    Arc::new(Ours {
        store: Store::new(algorithm, 10_000_000),
        clock: Clock::system(),
    })
}

/// Where leaky-bucket releasers would run (the system clock).
fn leaky_runtime() -> leaky_bucket::Runtime {
    leaky_bucket::Runtime {
        clock: Clock::system(),
        tasks: tokio_util::task::TaskTracker::new(),
        shutdown: tokio_util::sync::CancellationToken::new(),
    }
}

/// A single-threaded tokio runtime for the async decisions.
fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn leaky() -> Arc<dyn Decide> {
    Arc::new(Leaky {
        // One a nanosecond: every decision finds the key free.
        store: Store::new(
            LeakyBucket {
                interval: 1,
                depth: 10,
                max_wait: SECOND,
            },
            10_000_000,
        ),
        runtime: leaky_runtime(),
    })
}

fn subjects() -> Vec<(&'static str, Arc<dyn Decide>)> {
    vec![
        ("governor", Arc::new(governor())),
        ("token_bucket", ours(token_bucket())),
        ("sliding_window_counter", ours(sliding_counter())),
        ("fixed_window", ours(fixed_window())),
        ("sliding_window_log", ours(sliding_log())),
        ("leaky_bucket", leaky()),
    ]
}

fn single(c: &mut Criterion) {
    let mut group = c.benchmark_group("single");
    for (name, subject) in subjects() {
        group.bench_function(name, |b| b.iter(|| black_box(subject.decide(black_box(7)))));
        let mut key = 0;
        group.bench_function(format!("{name}/10k-keys"), |b| {
            b.iter(|| {
                key = (key + 1) % KEYS;
                black_box(subject.decide(black_box(key)))
            })
        });
    }
    group.finish();
}

/// Wall time per decision with two threads deciding `iters` times in all.
fn two_threads(subject: &Arc<dyn Decide>, iters: u64, same_key: bool) -> Duration {
    let barrier = Arc::new(Barrier::new(3));
    let threads: Vec<_> = (0..2u64)
        .map(|thread| {
            let subject = subject.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                for i in 0..iters / 2 {
                    let key = if same_key {
                        7
                    } else {
                        thread * 1_000_000 + i % KEYS
                    };
                    black_box(subject.decide(key));
                }
            })
        })
        .collect();
    barrier.wait();
    let start = tokio::time::Instant::now();
    for thread in threads {
        thread.join().expect("bench thread");
    }
    start.elapsed()
}

fn contended(c: &mut Criterion) {
    let mut group = c.benchmark_group("two-threads");
    for (name, subject) in subjects() {
        for (label, same) in [("same-key", true), ("distinct-keys", false)] {
            group.bench_function(format!("{name}/{label}"), |b| {
                b.iter_custom(|iters| two_threads(&subject, iters.max(2), same))
            });
        }
    }
    group.finish();
}

/// Resident bytes of this process.
fn resident() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages");
    pages * 4096
}

/// Keys tracked for the memory figure. Hash tables double when 7/8 full,
/// so the cost per key moves in a sawtooth with the count; `MEMORY_KEYS`
/// picks a point on it (the bench's default, 1 000 000, is near the worst
/// for both governor and us: each just doubled).
fn memory_keys() -> u64 {
    std::env::var("MEMORY_KEYS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000)
}

/// Tracks `MEMORY_KEYS` keys in `subject` and prints the bytes per key.
fn measure_in_this_process(subject: &str) {
    let clock = Clock::system();
    let before = resident();
    // Both keep an 8-byte key inline in the map entry: governor a u64, our
    // stores a 24-byte small vector (keys up to 16 bytes stay inline).
    let (key, keep): (u64, Box<dyn std::any::Any>) = match subject {
        "governor" => {
            let limiter = governor();
            for k in 0..memory_keys() {
                drop(limiter.check_key(&k));
            }
            (8, Box::new(limiter))
        }
        _ => {
            macro_rules! fill {
                ($algorithm:expr) => {{
                    let store = Store::new($algorithm, 10_000_000);
                    for k in 0..memory_keys() {
                        let now = clock.now();
                        store.acquire(&k.to_le_bytes(), now);
                    }
                    Box::new(store) as Box<dyn std::any::Any>
                }};
            }
            let store = match subject {
                "token_bucket" => fill!(token_bucket()),
                "sliding_window_counter" => fill!(sliding_counter()),
                "fixed_window" => fill!(fixed_window()),
                "sliding_window_log" => fill!(sliding_log()),
                other => panic!("unknown subject {other}"),
            };
            (24, store)
        }
    };
    let per_key = (resident() - before) as f64 / memory_keys() as f64;
    drop(black_box(keep));
    println!(
        "memory/{subject}: {per_key:.1} B per tracked key ({:.1} B without the {key}-byte key)",
        per_key - key as f64
    );
}

fn memory() {
    let exe = std::env::current_exe().expect("bench binary");
    for subject in [
        "governor",
        "token_bucket",
        "sliding_window_counter",
        "fixed_window",
        "sliding_window_log",
    ] {
        let out = std::process::Command::new(&exe)
            .env("RATELIMIT_MEMORY", subject)
            .output()
            .expect("memory child");
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
}

/// A redis-server on a free port, killed when dropped.
struct RedisServer(std::process::Child, String);

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis_server() -> Option<RedisServer> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .ok()?
        .port();
    let child = std::process::Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let server = RedisServer(child, format!("redis://127.0.0.1:{port}"));
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(server);
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    None
}

fn scopes(c: &mut Criterion) {
    use node::ratelimit::global::{Entry, Global, Peers};
    use node::ratelimit::redis::{OnFailure, Pool, RedisLimit, Settings};
    use node::ratelimit::{Limiter, Spec};
    let runtime = tokio_runtime();
    let leaky = leaky_runtime();
    let spec = Spec::TokenBucket(token_bucket());
    let clock = Clock::system();
    let mut group = c.benchmark_group("scope");
    let local = Limiter::new(spec, 10_000_000, leaky.clone());
    group.bench_function("local", |b| {
        b.to_async(&runtime)
            .iter(|| async { black_box(local.decide(b"k", clock.now()).await.is_ok()) })
    });
    let peers = Arc::new(Peers::default());
    let global = Global::new(spec, peers.clone()).expect("a token bucket can be global");
    let global = Limiter::Global(Store::new(global, 10_000_000));
    if let Limiter::Global(store) = &global {
        // Two peers have reported counts for the key.
        let now = clock.now();
        for peer in [2, 3] {
            let slot = peers.slot(peer, now).expect("a free slot");
            let entry = Entry {
                key: b"k".to_vec(),
                window: now / SECOND,
                counts: [3, 4],
            };
            store.with(b"k", now, |g, counts| g.merge(counts, slot, &entry, now));
        }
    }
    group.bench_function("global", |b| {
        b.to_async(&runtime)
            .iter(|| async { black_box(global.decide(b"k", clock.now()).await.is_ok()) })
    });
    match redis_server() {
        Some(server) => {
            let settings = Settings {
                url: server.1.clone(),
                connections: 4,
                timeout: Duration::from_secs(1),
                on_failure: OnFailure::Closed,
            };
            let pool = Pool::new(Some(&settings), clock);
            let redis = Limiter::Redis(Box::new(RedisLimit::new(
                "bench",
                spec,
                pool,
                Limiter::new(spec, 1_000, leaky),
                metrics::Counter::noop(),
            )));
            group.bench_function("redis", |b| {
                b.to_async(&runtime)
                    .iter(|| async { black_box(redis.decide(b"k", clock.now()).await.is_ok()) })
            });
        }
        None => println!("scope/redis: skipped (no redis-server)"),
    }
    group.finish();
}

/// Three nodes, 1 000 req/s offered at each, a fixed window of 1 000 per
/// 10 s; what each scope admits in the window (the ideal is 1 000).
fn admitted_by_scope() {
    use node::ratelimit::Spec;
    use node::ratelimit::global::{Entry, Global, Peers};
    const LIMIT: u64 = 1_000;
    const WINDOW: u64 = 10 * SECOND;
    const GAP: u64 = SECOND / 3_000;
    const LATENCY: u64 = 20 * MS;
    const MS: u64 = SECOND / 1_000;
    let spec = Spec::FixedWindow(FixedWindow::new(LIMIT, Window::Fixed(WINDOW)));
    let start = 1_796_000_000 * SECOND;
    println!("scope admitted (3 nodes × 1000 req/s, fixed window 1000 per 10 s, ideal 1000):");
    // Local: each node counts alone.
    let locals: Vec<Store<FixedWindow>> = (0..3)
        .map(|_| Store::new(FixedWindow::new(LIMIT, Window::Fixed(WINDOW)), 1_000))
        .collect();
    let admitted = (0..(WINDOW / GAP))
        .filter(|i| {
            locals[(*i % 3) as usize]
                .acquire(b"k", start + i * GAP)
                .allowed
        })
        .count();
    println!(
        "  local                     {admitted:>5}  ({:.2}× ideal)",
        admitted as f64 / LIMIT as f64
    );
    for sync in [10 * MS, 25 * MS, 50 * MS, 100 * MS] {
        let nodes: Vec<(Store<Global>, Arc<Peers>)> = (0..3)
            .map(|_| {
                let peers = Arc::new(Peers::default());
                let global = Global::new(spec, peers.clone()).expect("global");
                (Store::new(global, 1_000), peers)
            })
            .collect();
        // Batches in flight: (deliver at, to, from, entries).
        let mut flight: std::collections::VecDeque<(u64, usize, u64, Vec<Entry>)> =
            std::collections::VecDeque::new();
        let mut next_sync = start + sync;
        let mut admitted = 0u64;
        for i in 0..(WINDOW / GAP) {
            let now = start + i * GAP;
            while flight.front().is_some_and(|f| f.0 <= now) {
                let (_, to, from, entries) = flight.pop_front().expect("a batch");
                let (store, peers) = &nodes[to];
                let slot = peers.slot(from, now).expect("a slot");
                for entry in &entries {
                    store.with(&entry.key, now, |g, c| g.merge(c, slot, entry, now));
                }
            }
            if now >= next_sync {
                for (from, (store, _)) in nodes.iter().enumerate() {
                    let mut entries = Vec::new();
                    store.scan(|key, counts| {
                        entries.extend(store.algorithm().collect(key, counts, false, now))
                    });
                    for to in (0..3).filter(|t| *t != from) {
                        flight.push_back((now + LATENCY, to, from as u64, entries.clone()));
                    }
                }
                next_sync += sync;
            }
            admitted += u64::from(nodes[(i % 3) as usize].0.acquire(b"k", now).allowed);
        }
        let bound = 3_000.0 * (sync + LATENCY) as f64 / SECOND as f64;
        println!(
            "  global, sync {:>3} ms       {admitted:>5}  ({:.3}× ideal; documented bound +{bound:.0})",
            sync / MS,
            admitted as f64 / LIMIT as f64
        );
    }
    if let Some(server) = redis_server() {
        use node::ratelimit::Limiter;
        use node::ratelimit::redis::{OnFailure, Pool, RedisLimit, Settings};
        let runtime = tokio_runtime();
        let leaky = leaky_runtime();
        let settings = Settings {
            url: server.1.clone(),
            connections: 1,
            timeout: Duration::from_secs(1),
            on_failure: OnFailure::Closed,
        };
        let clock = Clock::system();
        let redis: Vec<Limiter> = (0..3)
            .map(|_| {
                Limiter::Redis(Box::new(RedisLimit::new(
                    "admitted",
                    spec,
                    Pool::new(Some(&settings), clock),
                    Limiter::new(spec, 1_000, leaky.clone()),
                    metrics::Counter::noop(),
                )))
            })
            .collect();
        let admitted = runtime.block_on(async {
            let mut admitted = 0;
            for i in 0..3_000usize {
                if let Ok(node::ratelimit::Check::Decided(d)) =
                    redis[i % 3].decide(b"k", clock.now()).await
                {
                    admitted += usize::from(d.allowed);
                }
            }
            admitted
        });
        println!(
            "  redis                     {admitted:>5}  ({:.2}× ideal)",
            admitted as f64 / LIMIT as f64
        );
    } else {
        println!("  redis: skipped (no redis-server)");
    }
    // Counter traffic: a batch with 1 000 changed 16-byte keys.
    let entries: Vec<Entry> = (0..1_000u64)
        .map(|i| Entry {
            key: format!("consumer-{i:07}").into_bytes(),
            window: 179_600_000,
            counts: [120, 37],
        })
        .collect();
    let batch = node::ratelimit::sync::Batch {
        limits: vec![node::ratelimit::sync::LimitCounts {
            limit: "plan:gold/burst".into(),
            entries,
        }],
    };
    let bytes = node::peer::codec::encode(&node::peer::Request::Counters(batch))
        .expect("encodable")
        .len();
    println!("counter traffic per 1 000 active keys (all changed every interval), per peer:");
    for sync in [10u64, 25, 50, 100] {
        println!(
            "  sync {sync:>3} ms: {bytes} B per batch, {:.0} KiB/s",
            bytes as f64 * (1_000 / sync) as f64 / 1024.0
        );
    }
}

criterion_group!(benches, single, contended, scopes);

fn main() {
    if let Ok(subject) = std::env::var("RATELIMIT_MEMORY") {
        measure_in_this_process(&subject);
        return;
    }
    memory();
    admitted_by_scope();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
