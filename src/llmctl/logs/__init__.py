"""Instance logs: the hub that writes them, the readers, and start progress read from them."""
