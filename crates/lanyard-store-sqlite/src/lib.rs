//! SQLite implementation of the lanyard-store trait, with sqlx and migrations.
