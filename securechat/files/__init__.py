"""Files, both ends: reading and hashing what is sent, receiving into partials and
publishing only verified files, SHA256SUMS, safe names, image sniffing."""
