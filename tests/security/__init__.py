"""Security tests: what an untrusted checkpoint, source, index, image or flag can make the job do (docs/security.md)."""
