from spdy_tui.cli import main

main()
