"""The data plane: one port that routes OpenAI-style requests by model to the instances, in a process
of its own (`python -m llmctl.gateway`). It learns the routes from the supervisor and asks it for
instances that are not serving (link.py, the contract in llmctl.planes); it guards its edges (edges.py,
headers.py, body.py, problems.py) and its connections (guard.py); it proxies and streams (server.py)."""
