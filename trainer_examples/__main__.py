"""`python -m trainer_examples train|compare|plot ...` (see `trainer_examples/README.md`)."""

from trainer_examples.cli import main

raise SystemExit(main())
