//! switchyard: a reverse proxy for blue/green and canary deploys, built on pingora.
//!
//! The binary (`src/main.rs`) only parses the command line; everything it runs lives here, so the
//! integration tests build the very same server. Start reading at [`server`] (how the pieces are
//! put together) and [`proxy`] (what happens to a request).

// `deny`, not `forbid`: one small module may opt out, httpd::inherited, which adopts the
// listening sockets a binary upgrade hands over (`from_raw_fd` has no safe equivalent).
#![deny(unsafe_code)]

pub mod admin;
pub mod chatops;
pub mod cli;
pub mod config;
pub mod ctl;
pub mod demo;
pub mod dns;
pub mod faults;
pub mod forwarding;
pub mod guard;
pub mod health;
pub mod httpd;
pub mod impact;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod notify;
pub mod page;
pub mod pools;
pub mod preview;
pub mod proxy;
pub mod reload;
pub mod report;
pub mod rollout;
pub mod routing;
pub mod sd_notify;
pub mod server;
pub mod settings;
pub mod shadow;
pub mod state;
pub mod store;
pub mod tls;
pub mod upgrade;
