//! callrelay's server assembly: configuration, auth, persistence, HTTP, metrics and start-up.
//! The Socket.IO protocol lives in `callrelay-signaling`.

pub mod auth;
pub mod cluster;
pub mod config;
pub mod db;
#[cfg(test)]
mod docs_tests;
pub mod http;
pub mod metrics;
pub mod relay;
pub mod secret_file;
pub mod server;
pub mod webhooks;
