"""``python -m inferlab.serve --model tiny [--host 127.0.0.1] [--port 8000] [--api-key KEY] [engine options]``."""

from inferlab.serve.cli import main

raise SystemExit(main())
