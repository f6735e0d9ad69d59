//! Accept loop (stub).
