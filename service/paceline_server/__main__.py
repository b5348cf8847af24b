"""`python -m paceline_server` is `paceline-server`."""

from paceline_server.cli import main

raise SystemExit(main())
