//! The phone-side core: BLE reassembly, a durable spool, and the uplink to the server.
