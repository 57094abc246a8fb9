"""Certificates, both ends: building the CA and certificates (cryptography, `gen-certs` only),
the certificate files, TLS contexts, identity rules and a pure DER reader (so `serve` and `join`
never import cryptography)."""
