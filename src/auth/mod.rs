//! SigV4 authentication (stub).
