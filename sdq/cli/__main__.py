"""`python -m sdq.cli`."""
from sdq.cli.main import main

raise SystemExit(main())
