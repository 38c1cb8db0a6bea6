//! Replaying golden fixtures ([`test_kit::fixture`]) through the wasm host, with the bodies cut in a
//! chosen way.

use std::collections::BTreeSet;

use anyhow::{Context as _, Result};

pub use test_kit::fixture::*;

use crate::gateway::{Gateway, StreamReport};
use crate::metrics::{self, HostSeries, SeriesValue};

/// The bodies of one replay and how each is cut into body calls.
#[derive(Clone, Debug)]
pub struct Exchange {
    /// What the client sends.
    pub request_body: Vec<u8>,
    pub request_split: Split,
    /// Whether the request carries a `content-length` header.
    pub content_length: bool,
    /// What the upstream sends.
    pub response_body: Vec<u8>,
    pub response_split: Split,
}

/// Replays of a [`Fixture`] through the wasm host.
pub trait FixtureReplay {
    /// Replays the exchange on a fresh one-worker gateway, the response body cut as `split` says.
    /// Time: request headers at t=0, response headers at 100 ms, every body chunk and the end at
    /// 150 ms, so the series cannot depend on how the body was cut.
    fn replay(&self, split: &Split) -> Result<Replay>;
    /// A one-worker gateway with this fixture's configuration.
    fn gateway(&self) -> Result<Gateway>;
    /// As [`FixtureReplay::replay`] on an existing gateway (which saves starting a VM per
    /// replay); the series returned are what this replay added (see [`metrics::delta`]).
    fn replay_on(&self, gw: &Gateway, split: &Split) -> Result<Replay>;
    /// As [`FixtureReplay::replay_on`] with the bodies and cuts of `exchange` in place of the
    /// fixture's own (the status, headers and end stay the fixture's).
    fn replay_exchange(&self, gw: &Gateway, exchange: &Exchange) -> Result<Replay>;
}

impl FixtureReplay for Fixture {
    fn replay(&self, split: &Split) -> Result<Replay> {
        let gw = self.gateway()?;
        self.replay_on(&gw, split)
    }

    fn gateway(&self) -> Result<Gateway> {
        Gateway::new(&self.config_text())
            .with_context(|| format!("fixture {}: starting the gateway", self.name))
    }

    fn replay_on(&self, gw: &Gateway, split: &Split) -> Result<Replay> {
        let exchange = Exchange {
            request_body: self.request_body(),
            request_split: Split::Whole,
            content_length: false,
            response_body: self.response_body()?,
            response_split: split.clone(),
        };
        self.replay_exchange(gw, &exchange)
    }

    fn replay_exchange(&self, gw: &Gateway, exchange: &Exchange) -> Result<Replay> {
        let before = gw.all_series();
        let request_body = &exchange.request_body;
        let response_body = &exchange.response_body;
        let split = &exchange.response_split;
        let mut s = gw.stream();
        let length = request_body.len().to_string();

        let mut req_headers: Vec<(String, String)> = vec![
            (":method".into(), self.request.method.clone()),
            (":path".into(), self.request.path.clone()),
            (":authority".into(), "llm.example".into()),
            (":scheme".into(), "http".into()),
        ];
        if !self
            .request
            .headers
            .keys()
            .any(|k| k.eq_ignore_ascii_case("content-type"))
        {
            req_headers.push(("content-type".into(), "application/json".into()));
        }
        req_headers.extend(
            self.request
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        if exchange.content_length {
            req_headers.push(("content-length".into(), length));
        }
        let req_headers: Vec<(&str, &str)> = req_headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        if request_body.is_empty() {
            s.request_headers_only(&req_headers);
        } else {
            s.request_headers(&req_headers);
            s.request_body(&exchange.request_split.cut(request_body));
        }

        gw.advance_ms(100);
        let status = self.response.status.to_string();
        let mut resp_headers: Vec<(&str, &str)> = vec![(":status", status.as_str())];
        resp_headers.extend(
            self.response
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        );
        let complete = self.end == End::Complete;
        if response_body.is_empty() && complete {
            s.response_headers_only(&resp_headers);
            gw.advance_ms(50);
        } else {
            s.response_headers(&resp_headers);
            gw.advance_ms(50);
            let chunks = split.cut(response_body);
            let n = chunks.len();
            for (i, chunk) in chunks.iter().enumerate() {
                s.response_chunk(chunk, complete && i + 1 == n);
            }
        }
        let report = match self.end {
            End::Complete => s.end(),
            End::ClientAbort => s.client_abort(),
            End::UpstreamAbort => s.upstream_abort(),
        };
        Ok(Replay {
            series: metrics::delta(&before, &gw.all_series()),
            report,
            anomalies: gw.anomalies(),
        })
    }
}

/// The outcome of one replay.
#[derive(Debug)]
pub struct Replay {
    pub series: Vec<HostSeries>,
    pub report: StreamReport,
    pub anomalies: Vec<String>,
}

impl Replay {
    /// The series a fixture's `expect` lists: non-zero `llm_*` counters with their value and every
    /// `llm_*` histogram with its sample count.
    pub fn observed_lines(&self) -> BTreeSet<String> {
        self.series
            .iter()
            .filter(|s| s.name.starts_with("llm_"))
            .filter_map(|s| match &s.value {
                SeriesValue::Counter(0) => None,
                SeriesValue::Counter(v) => Some(format!("{} value={v}", s.key())),
                SeriesValue::Histogram(h) if h.count() == 0 => None,
                SeriesValue::Histogram(h) => Some(format!("{} count={}", s.key(), h.count())),
                SeriesValue::Gauge(_) => None,
            })
            .collect()
    }

    /// Every non-zero `llm_*` series with its full value (histogram samples included), for
    /// comparing two replays of the same exchange.
    pub fn full_lines(&self) -> BTreeSet<String> {
        self.series
            .iter()
            .filter(|s| s.name.starts_with("llm_"))
            .filter_map(|s| match &s.value {
                SeriesValue::Counter(0) | SeriesValue::Gauge(0) => None,
                SeriesValue::Histogram(h) if h.count() == 0 => None,
                SeriesValue::Counter(v) => Some(format!("{} counter {v}", s.key())),
                SeriesValue::Gauge(v) => Some(format!("{} gauge {v}", s.key())),
                SeriesValue::Histogram(h) => Some(format!("{} histogram {:?}", s.key(), h.samples)),
            })
            .collect()
    }

    /// Gauges that are not back to zero after the stream ended.
    pub fn nonzero_gauges(&self) -> Vec<String> {
        self.series
            .iter()
            .filter_map(|s| match s.value {
                SeriesValue::Gauge(v) if v != 0 => Some(format!("{} = {v}", s.key())),
                _ => None,
            })
            .collect()
    }
}
