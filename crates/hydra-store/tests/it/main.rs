//! The store conformance suite: every test runs on SQLite (a real file) and on PostgreSQL (the
//! server the test command started), through the same `Store` API.

mod conformance;
