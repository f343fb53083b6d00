"""Front ends of spdy-tui: the `spdy` command line and the `spdy-tui` terminal UI."""
