//! HTTP layer (stub).
