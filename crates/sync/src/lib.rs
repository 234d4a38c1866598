//! The client side of the approval queue: HTTPS over rustls, TLS 1.3 only, and a server
//! identity proven by its SubjectPublicKeyInfo SHA-256 matching a configured pin, not by a
//! certificate authority or a host name.
//!
//! Limitation: this is the first part of the client. It connects, pins and asks for the
//! queue's health; sessions, sync and approvals are not built yet.

pub mod client;
pub mod pin;
