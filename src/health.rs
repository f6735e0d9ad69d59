//! GetHealthStatus (stub).
