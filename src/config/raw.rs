//! Raw serde structs (stub).
