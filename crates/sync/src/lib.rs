//! The client side of the approval queue: HTTPS over rustls, TLS 1.3 only, and a server
//! identity proven by its SubjectPublicKeyInfo SHA-256 matching a configured pin, not by a
//! certificate authority or a host name.
//!
//! - [`pin`]: the pinned verifier and the TLS configuration;
//! - [`client`]: sessions and requests with retries;
//! - [`sync`]: the queue copied into the local store and checked again there.

pub mod client;
pub mod pin;
pub mod sync;
