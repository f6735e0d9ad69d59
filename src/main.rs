//! xks-proxy binary.
fn main() {}
