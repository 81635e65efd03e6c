"""Serve a Flask app factory under a chosen server, for bench_servers (not for production).

python -m bench.serve_app MODULE:FACTORY --server gunicorn|granian-wsgi|granian-rsgi
    --bind 127.0.0.1:PORT [--workers 2] [--threads 4]
"""

from __future__ import annotations

import argparse
import importlib


def main(argv: list[str] | None = None) -> None:
    """Build the app once, then serve it until SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("factory")
    parser.add_argument("--server", choices=["gunicorn", "granian-wsgi", "granian-rsgi"])
    parser.add_argument("--bind", required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args(argv)
    module, _, name = args.factory.partition(":")
    app = getattr(importlib.import_module(module), name)()
    if args.server == "gunicorn":
        from gunicorn.app.base import BaseApplication

        class _Gunicorn(BaseApplication):
            def load_config(self):
                for key, value in {
                    "bind": args.bind,
                    "workers": args.workers,
                    "worker_class": "gthread",
                    "threads": args.threads,
                    "loglevel": "warning",
                }.items():
                    self.cfg.set(key, value)

            def load(self):
                return app

        _Gunicorn().run()
    else:
        from service.cli.serve import run_granian

        run_granian(app, args.bind, args.workers, args.threads, args.server == "granian-wsgi")


if __name__ == "__main__":
    main()
