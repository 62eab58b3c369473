"""Calls into the operating system: processes, ports, peer credentials, safe files, the probe client."""
