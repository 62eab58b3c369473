"""The control plane: runners, the supervisor, adoption, the control socket and its client."""
