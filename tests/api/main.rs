//! End-to-end tests: the real server on an ephemeral port, real HTTP and WebSocket clients.

mod backup;
mod binary;
mod browser;
mod cluster;
mod conformance;
mod connections;
mod dashboard;
mod devices;
mod full_disk;
mod helpers;
mod ice;
mod limits;
mod metrics;
mod pairing;
mod rest;
mod restart;
mod security;
mod signaling;
mod storage_down;
mod supervision;
mod tus;
