//! Header value templates, rendered per request from the [`RequestCx`].
//!
//! A template was parsed and checked when the configuration was validated
//! (`raft::model::transform::Template`); here it is compiled once per
//! snapshot. A template without variables is a ready [`HeaderValue`].
//!
//! When a variable has no value for a request (no principal, no such
//! claim, a claim that is an object), the header operation is **skipped**:
//! the header is neither set nor added. A rendered value that is not a
//! valid header value is dropped and counted.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::IpAddr;

use http::{HeaderValue, Method};
use raft::model::transform::{Piece, Template, Variable};

use crate::pipeline::RequestCx;
use crate::pipeline::auth::Principal;

/// What templates can read about a request.
pub struct Vars<'a> {
    /// The verified caller.
    pub principal: Option<&'a Principal>,
    /// The route's name.
    pub route: Option<&'a str>,
    /// `x-request-id`.
    pub request_id: &'a HeaderValue,
    /// The method.
    pub method: &'a Method,
    /// The normalised path.
    pub path: &'a str,
    /// The host, lowercase, without port.
    pub host: &'a str,
    /// The client's IP.
    pub client_ip: IpAddr,
}

impl<'a> Vars<'a> {
    /// The variables of the request in `cx`.
    pub fn of(cx: &'a RequestCx) -> Self {
        Self {
            principal: cx.principal.as_ref(),
            route: cx.route.as_deref().map(|r| r.name.as_str()),
            request_id: &cx.request_id,
            method: &cx.method,
            path: &cx.path,
            host: &cx.host,
            client_ip: cx.client_ip,
        }
    }
}

/// A compiled template.
#[derive(Debug, Clone)]
pub enum Compiled {
    /// No variables: the value is known.
    Fixed(HeaderValue),
    /// Pieces to render per request.
    Pieces(Vec<Piece>),
}

/// What rendering gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Rendered {
    /// The header value.
    Value(HeaderValue),
    /// A variable had no value: skip the operation.
    Missing,
    /// The result is not a valid header value: dropped, counted.
    Invalid,
}

impl Compiled {
    /// Compiles a validated template text; `None` if it does not parse.
    pub fn new(text: &str) -> Option<Self> {
        let template = Template::parse(text).ok()?;
        if template.variables().next().is_none() {
            let literal: String = template
                .0
                .iter()
                .map(|p| match p {
                    Piece::Literal(text) => text.as_str(),
                    Piece::Var(_) => "",
                })
                .collect();
            return HeaderValue::from_str(&literal).ok().map(Compiled::Fixed);
        }
        Some(Compiled::Pieces(template.0))
    }

    /// Renders the template with `vars`.
    pub fn render(&self, vars: &Vars<'_>) -> Rendered {
        let pieces = match self {
            Compiled::Fixed(value) => return Rendered::Value(value.clone()),
            Compiled::Pieces(pieces) => pieces,
        };
        let mut out = String::with_capacity(64);
        for piece in pieces {
            match piece {
                Piece::Literal(text) => out.push_str(text),
                Piece::Var(variable) => match value(vars, variable) {
                    Some(text) => out.push_str(&text),
                    None => return Rendered::Missing,
                },
            }
        }
        match HeaderValue::from_str(&out) {
            Ok(value) => Rendered::Value(value),
            Err(_) => Rendered::Invalid,
        }
    }
}

/// The value of `variable`, if the request has one.
pub fn value<'a>(vars: &Vars<'a>, variable: &Variable) -> Option<Cow<'a, str>> {
    let principal = vars.principal;
    let consumer = principal.and_then(|p| p.consumer.as_deref());
    Some(match variable {
        Variable::ConsumerId => Cow::Borrowed(consumer?.id.as_str()),
        Variable::ConsumerName => Cow::Borrowed(consumer?.name.as_str()),
        Variable::ConsumerPlan => Cow::Borrowed(consumer?.plan.as_deref()?),
        Variable::AuthMethod => Cow::Borrowed(principal?.method.as_str()),
        Variable::Claim(name) => principal?.identity.as_deref()?.claim(name)?,
        Variable::RouteName => Cow::Borrowed(vars.route?),
        Variable::RequestId => Cow::Borrowed(vars.request_id.to_str().ok()?),
        Variable::RequestMethod => Cow::Borrowed(vars.method.as_str()),
        Variable::RequestPath => Cow::Borrowed(vars.path),
        Variable::RequestHost => Cow::Borrowed(vars.host),
        Variable::ClientIp => {
            let mut text = String::with_capacity(40);
            let _ = write!(text, "{}", vars.client_ip);
            Cow::Owned(text)
        }
    })
}
