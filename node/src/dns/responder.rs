//! The built-in authoritative DNS responder (hickory-server), `[dns]`.
//!
//! It answers for one zone (`dns.zone`) and the names configured in it
//! (`[dns.names]`, each with the regions that serve it; an empty list means
//! every region), on UDP and TCP at `dns.listen`:
//! - `A` / `AAAA` for a configured name: the IPv4 / IPv6 addresses of the
//!   regions the [`RegionHealth`] view says are healthy, ordered by
//!   `dns.region-preference` (regions not listed follow, by name), with TTL
//!   `dns.ttl`. No healthy region: an empty answer (NOERROR, no records).
//! - `ANY` for a configured name: its `A` and `AAAA` records.
//! - `SOA` and `NS` at the zone's apex: the SOA (primary `dns.nameservers[0]`,
//!   contact `dns.hostmaster`, a serial that grows with each change of the
//!   view, negative TTL = `dns.ttl`) and one NS per `dns.nameservers`.
//! - Another type for a name that exists: NOERROR with no answer, the SOA in
//!   the authority section.
//! - An unknown name inside the zone: NXDOMAIN with the SOA.
//! - A name outside the zone, a class other than IN, or an opcode other than
//!   QUERY: REFUSED (NOTIMP for opcodes). A message with other than one
//!   question: FORMERR. Malformed packets never reach this code: the
//!   server drops or answers them (FORMERR).
//!
//! Every answer is authoritative (AA). Queries are counted in
//! `meridian_dns_queries_total{rcode}`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, NS, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::regions::{RegionHealth, RegionState};

/// `[dns]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RawDns {
    /// `listen`: UDP and TCP address.
    pub listen: String,
    /// `zone`: the zone answered for; the responder is off without it.
    pub zone: Option<String>,
    /// `ttl`: of every answer.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// `names`: name (relative to the zone, `@` for the apex) → regions
    /// serving it (empty: all).
    pub names: BTreeMap<String, Vec<String>>,
    /// `region-preference`: answer order.
    pub region_preference: Vec<String>,
    /// `nameservers`: NS records at the apex (default `ns.<zone>`).
    pub nameservers: Vec<String>,
    /// `hostmaster`: the SOA contact (default `hostmaster.<zone>`).
    pub hostmaster: Option<String>,
}

impl Default for RawDns {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:5353".into(),
            zone: None,
            ttl: Duration::from_secs(5),
            names: BTreeMap::new(),
            region_preference: Vec::new(),
            nameservers: Vec::new(),
            hostmaster: None,
        }
    }
}

/// The validated `[dns]`.
#[derive(Debug, Clone)]
pub struct DnsSettings {
    /// UDP and TCP address.
    pub listen: SocketAddr,
    /// The answers.
    pub zone: Arc<Zone>,
}

/// A fully qualified, lower-case name from configuration text.
fn fqdn(text: &str) -> Option<Name> {
    let text = text.trim();
    if text.is_empty() || text.contains(' ') {
        return None;
    }
    let mut name = Name::from_utf8(text).ok()?.to_lowercase();
    name.set_fqdn(true);
    Some(name)
}

impl RawDns {
    /// Checks `[dns]`, reporting broken rules through `fail`; `None` when
    /// no zone is configured (or the section is broken).
    pub fn validate(
        self,
        fail: &mut dyn FnMut(&str, &dyn std::fmt::Display, &str),
    ) -> Option<DnsSettings> {
        let zone_text = self.zone.clone()?;
        let listen = match self.listen.parse::<SocketAddr>() {
            Ok(listen) => Some(listen),
            Err(_) => {
                fail(
                    "dns.listen",
                    &self.listen,
                    "must be an IP address and port, e.g. 0.0.0.0:5353",
                );
                None
            }
        };
        let Some(origin) = fqdn(&zone_text) else {
            fail("dns.zone", &zone_text, "must be a domain name");
            return None;
        };
        let ttl = self.ttl.as_secs();
        if ttl == 0 || ttl > 86_400 {
            fail(
                "dns.ttl",
                &humantime::format_duration(self.ttl),
                "must be between 1s and 1d (whole seconds)",
            );
        }
        let mut names = BTreeMap::new();
        for (relative, regions) in &self.names {
            let key = format!("dns.names.{relative}");
            let name = if relative == "@" {
                Some(origin.clone())
            } else if relative.ends_with('.') {
                None
            } else {
                fqdn(relative).and_then(|n| {
                    let mut n = n;
                    n.set_fqdn(false);
                    n.append_domain(&origin).ok()
                })
            };
            let Some(name) = name else {
                fail(
                    &key,
                    relative,
                    "must be a name relative to dns.zone (without a final dot), or @",
                );
                continue;
            };
            for region in regions {
                if !crate::regions::is_region_name(region) {
                    fail(&key, region, "must list region names");
                }
            }
            names.insert(name, regions.clone());
        }
        if names.is_empty() {
            fail(
                "dns.names",
                &"{}",
                "must name at least one name to answer for",
            );
        }
        let mut nameservers = Vec::new();
        for (i, server) in self.nameservers.iter().enumerate() {
            match fqdn(server) {
                Some(name) => nameservers.push(name),
                None => fail(
                    &format!("dns.nameservers[{i}]"),
                    server,
                    "must be a domain name",
                ),
            }
        }
        if nameservers.is_empty() {
            nameservers.extend(
                Name::from_ascii("ns")
                    .ok()
                    .and_then(|ns| ns.append_domain(&origin).ok()),
            );
        }
        let hostmaster = match &self.hostmaster {
            Some(text) => fqdn(text).or_else(|| {
                fail(
                    "dns.hostmaster",
                    text,
                    "must be a domain name (the @ written as a dot)",
                );
                None
            }),
            None => Name::from_ascii("hostmaster")
                .ok()
                .and_then(|h| h.append_domain(&origin).ok()),
        };
        let listen = listen?;
        Some(DnsSettings {
            listen,
            zone: Arc::new(Zone {
                origin: origin.clone(),
                ttl: ttl.clamp(1, 86_400) as u32,
                names,
                preference: self.region_preference,
                nameservers,
                hostmaster: hostmaster.unwrap_or(origin),
            }),
        })
    }
}

/// What the responder knows, apart from the view.
#[derive(Debug, Clone)]
pub struct Zone {
    origin: Name,
    ttl: u32,
    names: BTreeMap<Name, Vec<String>>,
    preference: Vec<String>,
    nameservers: Vec<Name>,
    hostmaster: Name,
}

/// An answer, before it is encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The response code.
    pub code: ResponseCode,
    /// Whether the answer is authoritative.
    pub authoritative: bool,
    /// The answer section.
    pub answers: Vec<Record>,
    /// The SOA for negative answers (authority section).
    pub soa: Vec<Record>,
}

impl Reply {
    fn refused() -> Self {
        Self {
            code: ResponseCode::Refused,
            authoritative: false,
            answers: Vec::new(),
            soa: Vec::new(),
        }
    }
}

impl Zone {
    /// The zone's apex.
    pub fn origin(&self) -> &Name {
        &self.origin
    }

    fn soa(&self, serial: u32) -> Record {
        let primary = self
            .nameservers
            .first()
            .cloned()
            .unwrap_or_else(|| self.origin.clone());
        Record::from_rdata(
            self.origin.clone(),
            self.ttl,
            RData::SOA(SOA::new(
                primary,
                self.hostmaster.clone(),
                serial,
                3600,
                600,
                86_400,
                self.ttl,
            )),
        )
    }

    /// The regions serving `regions` (empty: all), healthy ones only, in
    /// preference order.
    fn healthy<'a>(
        &self,
        allowed: &[String],
        view: &'a BTreeMap<String, RegionState>,
    ) -> Vec<&'a RegionState> {
        let mut order: Vec<&String> = self
            .preference
            .iter()
            .filter(|r| view.contains_key(*r))
            .collect();
        order.extend(view.keys().filter(|r| !self.preference.contains(r)));
        order
            .into_iter()
            .filter(|region| allowed.is_empty() || allowed.contains(region))
            .filter_map(|region| view.get(region))
            .filter(|state| state.healthy)
            .collect()
    }

    /// The answer to one question, given the view and the SOA serial.
    pub fn answer(
        &self,
        name: &Name,
        class: DNSClass,
        kind: RecordType,
        view: &BTreeMap<String, RegionState>,
        serial: u32,
    ) -> Reply {
        let name = name.to_lowercase();
        if class != DNSClass::IN || !self.origin.zone_of(&name) {
            return Reply::refused();
        }
        let mut reply = Reply {
            code: ResponseCode::NoError,
            authoritative: true,
            answers: Vec::new(),
            soa: Vec::new(),
        };
        let apex = name == self.origin;
        if apex && kind == RecordType::SOA {
            reply.answers.push(self.soa(serial));
            return reply;
        }
        if apex && kind == RecordType::NS {
            reply.answers = self
                .nameservers
                .iter()
                .map(|ns| {
                    Record::from_rdata(self.origin.clone(), self.ttl, RData::NS(NS(ns.clone())))
                })
                .collect();
            return reply;
        }
        match self.names.get(&name) {
            Some(allowed) => {
                let (v4, v6) = match kind {
                    RecordType::A => (true, false),
                    RecordType::AAAA => (false, true),
                    RecordType::ANY => (true, true),
                    _ => (false, false),
                };
                let mut seen: Vec<IpAddr> = Vec::new();
                for region in self.healthy(allowed, view) {
                    for ip in &region.addresses {
                        if seen.contains(ip) {
                            continue;
                        }
                        let rdata = match ip {
                            IpAddr::V4(ip) if v4 => RData::A(A(*ip)),
                            IpAddr::V6(ip) if v6 => RData::AAAA(AAAA(*ip)),
                            _ => continue,
                        };
                        seen.push(*ip);
                        reply
                            .answers
                            .push(Record::from_rdata(name.clone(), self.ttl, rdata));
                    }
                }
                if reply.answers.is_empty() {
                    reply.soa.push(self.soa(serial));
                }
            }
            None => {
                // A name above a configured one exists (an empty
                // non-terminal), as does the apex: no data, not NXDOMAIN.
                let exists = apex || self.names.keys().any(|n| name.zone_of(n));
                if !exists {
                    reply.code = ResponseCode::NXDomain;
                }
                reply.soa.push(self.soa(serial));
            }
        }
        reply
    }
}

/// The hickory request handler over a [`Zone`] and the view.
struct Handler {
    zone: Arc<Zone>,
    view: Arc<RegionHealth>,
    serial_base: u32,
    metrics: Arc<Metrics>,
}

impl Handler {
    fn count(&self, code: ResponseCode) {
        let rcode = match code {
            ResponseCode::NoError => "noerror",
            ResponseCode::NXDomain => "nxdomain",
            ResponseCode::Refused => "refused",
            ResponseCode::FormErr => "formerr",
            ResponseCode::NotImp => "notimp",
            ResponseCode::ServFail => "servfail",
            _ => "other",
        };
        self.metrics
            .counter("meridian_dns_queries_total", &[("rcode", rcode.to_owned())])
            .increment(1);
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let edns = request.edns.as_ref().map(|asked| {
            let mut edns = Edns::new();
            edns.set_max_payload(asked.max_payload().max(512));
            edns.set_version(0);
            edns
        });
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(edns) = &edns {
            builder.edns(edns);
        }
        let mut metadata = Metadata::response_from_request(&request.metadata);
        let reply = if request.metadata.message_type != MessageType::Query {
            None
        } else if request.metadata.op_code != OpCode::Query {
            Some(ResponseCode::NotImp)
        } else {
            match request.request_info() {
                Err(_) => Some(ResponseCode::FormErr),
                Ok(info) => {
                    let question = info.query;
                    let name: Name = question.name().clone().into();
                    let serial = self.serial_base.wrapping_add(self.view.version() as u32);
                    let reply = self.zone.answer(
                        &name,
                        question.query_class(),
                        question.query_type(),
                        &self.view.all(),
                        serial,
                    );
                    metadata.response_code = reply.code;
                    metadata.authoritative = reply.authoritative;
                    self.count(reply.code);
                    let response = builder.build(
                        metadata,
                        reply.answers.iter(),
                        std::iter::empty(),
                        reply.soa.iter(),
                        std::iter::empty(),
                    );
                    return send(&mut response_handle, response, request).await;
                }
            }
        };
        let code = reply.unwrap_or(ResponseCode::FormErr);
        self.count(code);
        let response = builder.error_msg(&request.metadata, code);
        send(&mut response_handle, response, request).await
    }
}

async fn send<'a, R: ResponseHandler>(
    handle: &mut R,
    response: hickory_server::zone_handler::MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
    request: &Request,
) -> ResponseInfo {
    match handle.send_response(response).await {
        Ok(info) => info,
        Err(error) => {
            tracing::debug!(%error, "cannot send a DNS response");
            let mut metadata = Metadata::response_from_request(&request.metadata);
            metadata.response_code = ResponseCode::ServFail;
            hickory_proto::op::Header {
                metadata,
                counts: Default::default(),
            }
            .into()
        }
    }
}

/// The responder's sockets, bound at start so that a taken port fails the
/// start and tests can read the port.
pub struct Bound {
    udp: tokio::net::UdpSocket,
    tcp: tokio::net::TcpListener,
}

impl Bound {
    /// Binds UDP at `address`, then TCP on the same port. With port 0 the
    /// port the kernel picks for UDP may be taken for TCP, so a few more
    /// ports are tried before giving up.
    pub fn bind(address: SocketAddr) -> std::io::Result<Self> {
        let attempts = if address.port() == 0 { 32 } else { 1 };
        let mut attempt = 0;
        let (udp, tcp) = loop {
            attempt += 1;
            let udp = std::net::UdpSocket::bind(address)?;
            let port = udp.local_addr()?.port();
            match std::net::TcpListener::bind(SocketAddr::new(address.ip(), port)) {
                Ok(tcp) => break (udp, tcp),
                Err(error)
                    if error.kind() == std::io::ErrorKind::AddrInUse && attempt < attempts => {}
                Err(error) => return Err(error),
            }
        };
        udp.set_nonblocking(true)?;
        tcp.set_nonblocking(true)?;
        Ok(Self {
            udp: tokio::net::UdpSocket::from_std(udp)?,
            tcp: tokio::net::TcpListener::from_std(tcp)?,
        })
    }

    /// The bound address (UDP and TCP).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.udp.local_addr()
    }

    /// The UDP socket and the TCP listener, for a server of one's own
    /// (the tests' DNS servers bind the same way).
    pub fn into_parts(self) -> (tokio::net::UdpSocket, tokio::net::TcpListener) {
        (self.udp, self.tcp)
    }
}

/// Serves DNS on `bound` until `shutdown`.
pub async fn serve(
    bound: Bound,
    zone: Arc<Zone>,
    view: Arc<RegionHealth>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let serial_base = (crate::cluster::now_ms() / 1000) as u32;
    let mut server = hickory_server::Server::new(Handler {
        zone,
        view,
        serial_base,
        metrics,
    });
    if let Ok(address) = bound.local_addr() {
        tracing::info!(%address, "DNS responder (UDP and TCP)");
    }
    server.register_socket(bound.udp);
    server.register_listener(bound.tcp, Duration::from_secs(5), 64);
    shutdown.cancelled().await;
    if let Err(error) = server.shutdown_gracefully().await {
        tracing::debug!(%error, "DNS responder stopped with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::regions::Source;

    fn zone() -> Zone {
        let raw = RawDns {
            zone: Some("gw.example.com".into()),
            names: BTreeMap::from([
                ("api".to_owned(), Vec::new()),
                ("eu.api".to_owned(), vec!["eu-west".to_owned()]),
            ]),
            region_preference: vec!["us-east".into(), "eu-west".into()],
            ..RawDns::default()
        };
        let settings = raw
            .validate(&mut |key, value, rule| panic!("{key} {value} {rule}"))
            .expect("a zone");
        Arc::unwrap_or_clone(settings.zone)
    }

    fn state(healthy: bool, addresses: &[&str]) -> RegionState {
        RegionState {
            healthy,
            reason: String::new(),
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
            updated_at_ms: 0,
            source: Source::Static,
            nodes: BTreeMap::new(),
        }
    }

    fn view() -> BTreeMap<String, RegionState> {
        BTreeMap::from([
            ("ap-south".to_owned(), state(true, &["192.0.2.30"])),
            (
                "eu-west".to_owned(),
                state(true, &["192.0.2.10", "2001:db8::10"]),
            ),
            ("us-east".to_owned(), state(true, &["192.0.2.20"])),
            ("sa-east".to_owned(), state(false, &["192.0.2.40"])),
        ])
    }

    fn ask(
        zone: &Zone,
        name: &str,
        kind: RecordType,
        view: &BTreeMap<String, RegionState>,
    ) -> Reply {
        zone.answer(
            &Name::from_ascii(name).unwrap(),
            DNSClass::IN,
            kind,
            view,
            7,
        )
    }

    fn ips(reply: &Reply) -> Vec<String> {
        reply
            .answers
            .iter()
            .map(|r| match &r.data {
                RData::A(a) => a.0.to_string(),
                RData::AAAA(a) => a.0.to_string(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn healthy_regions_only_in_preference_order() {
        let zone = zone();
        let reply = ask(&zone, "API.gw.example.com.", RecordType::A, &view());
        assert_eq!(reply.code, ResponseCode::NoError);
        assert!(reply.authoritative);
        assert_eq!(
            ips(&reply),
            ["192.0.2.20", "192.0.2.10", "192.0.2.30"],
            "preferred first, then by name; sa-east is unhealthy"
        );
        assert!(reply.answers.iter().all(|r| r.ttl == 5));
        let reply = ask(&zone, "api.gw.example.com.", RecordType::AAAA, &view());
        assert_eq!(ips(&reply), ["2001:db8::10"]);
        let reply = ask(&zone, "eu.api.gw.example.com.", RecordType::A, &view());
        assert_eq!(ips(&reply), ["192.0.2.10"], "a name limited to a region");
    }

    #[test]
    fn no_healthy_region_is_an_empty_answer() {
        let zone = zone();
        let mut view = view();
        view.get_mut("eu-west").unwrap().healthy = false;
        let reply = ask(&zone, "eu.api.gw.example.com.", RecordType::A, &view);
        assert_eq!(reply.code, ResponseCode::NoError);
        assert!(reply.answers.is_empty());
        assert_eq!(reply.soa.len(), 1);
    }

    #[test]
    fn unknown_names_outside_names_and_apex_records() {
        let zone = zone();
        let reply = ask(&zone, "www.gw.example.com.", RecordType::A, &view());
        assert_eq!(reply.code, ResponseCode::NXDomain);
        assert_eq!(reply.soa.len(), 1);
        let reply = ask(&zone, "example.org.", RecordType::A, &view());
        assert_eq!(reply.code, ResponseCode::Refused);
        assert!(reply.answers.is_empty() && reply.soa.is_empty());
        let reply = ask(&zone, "gw.example.com.", RecordType::SOA, &view());
        let RData::SOA(soa) = &reply.answers[0].data else {
            panic!("an SOA");
        };
        assert_eq!(soa.serial, 7);
        assert_eq!(soa.minimum, 5);
        assert_eq!(soa.mname.to_string(), "ns.gw.example.com.");
        assert_eq!(soa.rname.to_string(), "hostmaster.gw.example.com.");
        let reply = ask(&zone, "gw.example.com.", RecordType::NS, &view());
        assert_eq!(reply.answers.len(), 1);
        let reply = ask(&zone, "api.gw.example.com.", RecordType::MX, &view());
        assert_eq!(
            (reply.code, reply.answers.len(), reply.soa.len()),
            (ResponseCode::NoError, 0, 1)
        );
        let reply = zone.answer(
            &Name::from_ascii("api.gw.example.com.").unwrap(),
            DNSClass::CH,
            RecordType::A,
            &view(),
            1,
        );
        assert_eq!(reply.code, ResponseCode::Refused);
    }

    #[test]
    fn bad_settings_name_their_key() {
        let mut errors = Vec::new();
        let raw = RawDns {
            listen: "nope".into(),
            zone: Some("gw.example.com".into()),
            ttl: Duration::ZERO,
            names: BTreeMap::from([("bad name".to_owned(), vec!["eu west".to_owned()])]),
            ..RawDns::default()
        };
        assert!(
            raw.validate(&mut |key, _, _| errors.push(key.to_owned()))
                .is_none()
        );
        assert_eq!(
            errors,
            ["dns.listen", "dns.ttl", "dns.names.bad name", "dns.names"]
        );
        assert!(
            RawDns::default()
                .validate(&mut |_, _, _| panic!())
                .is_none(),
            "off without a zone"
        );
    }
}
