//! Test scaffolding shared by every suite: the filter's native core tests, the wasm host suite and
//! the end-to-end tests through Envoy. One fixture reader, one way to cut a body into callbacks, one
//! set of SSE wire builders and one series key, so the suites cannot drift apart.

pub mod fixture;
pub mod wire;
