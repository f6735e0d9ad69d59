//! PKCS#11 backend (stub).
