//! The Lanyard server: durable ingest, speech-to-text, replies and push.
