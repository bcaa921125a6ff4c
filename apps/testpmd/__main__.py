"""``python -m apps.testpmd``."""
from .main import main

raise SystemExit(main())
