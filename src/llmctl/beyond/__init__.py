"""What goes beyond one terminal: doctor, init, export, the login service."""
