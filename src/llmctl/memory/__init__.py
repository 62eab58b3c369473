"""Memory: sampling (PSS, footprint, NVML), estimates (GGUF), the budget."""
