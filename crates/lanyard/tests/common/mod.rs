//! The end-to-end tests' glue to `lanyard-testkit`: this crate's own
//! `lanyard` executable, started as the roles, each read through its stdout
//! as the event type it prints.

#![allow(dead_code, unused_imports)]

use std::path::Path;

pub use lanyard_pendant::sim::SimEvent;
pub use lanyard_relay::RelayEvent;
pub use lanyard_relay::host::Stamped;
pub use lanyard_server::ServeEvent;
pub use lanyard_testkit::{Child, Lanyard, Server, expect_event, model_dir};

/// The `lanyard` executable Cargo built for these tests.
pub fn lanyard() -> Lanyard {
    Lanyard::new(env!("CARGO_BIN_EXE_lanyard"))
}

/// `lanyard relay ARGS`, read as the relay's events.
pub fn relay(args: &[&str]) -> Child<Stamped> {
    lanyard().spawn("relay", args)
}

/// `lanyard pendant-sim ARGS`, read as the simulator's events.
pub fn pendant(args: &[&str]) -> Child<SimEvent> {
    lanyard().spawn("pendant-sim", args)
}

/// Starts `lanyard serve` on a loopback port; returns it and its base URL.
pub async fn start_server(data_dir: &Path) -> (Server, String) {
    let server = lanyard().start_server(data_dir).await.unwrap_or_else(|e| panic!("{e}"));
    let url = server.url.clone();
    (server, url)
}

/// Registers a device in a server data directory and returns its token.
pub fn add_device(data_dir: &Path, name: &str) -> String {
    lanyard().add_device(data_dir, name)
}
