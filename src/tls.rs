//! TLS (stub).
