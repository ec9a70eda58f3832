"""Allow ``python -m osteoflag``."""

from osteoflag.cli import main

raise SystemExit(main())
