//! The lanyard command: serve, relay, pendant-sim, demo.
