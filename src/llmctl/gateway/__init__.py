"""The gateway: one port that routes OpenAI-style requests by model to the instances (server.py),
starting them on demand and evicting idle ones within the memory budget (admission.py)."""
