"""`python -m chaptering.migrations`: upgrade, inspect, check or extend the feedback store's schema."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from sqlalchemy import create_engine

from chaptering import migrations


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaptering.migrations", description=__doc__)
    parser.add_argument("--url", help="database URL (default: the settings' feedback_url / feedback_db)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("upgrade", help="migrate to the newest revision (what a store does when first used)")
    sub.add_parser("current", help="print the database's revision and the newest one")
    sub.add_parser("check", help="exit 1 if the models and the database differ (alembic check)")
    rev = sub.add_parser("revision", help="write the next versions/NNNN_<message>.py by autogenerate")
    rev.add_argument("-m", "--message", required=True)
    args = parser.parse_args(argv)

    if args.command == "revision" and args.url is None:
        # Compare the models with a scratch SQLite database at head: no server needed, nothing touched.
        with tempfile.TemporaryDirectory() as tmp:
            engine = create_engine(f"sqlite:///{Path(tmp) / 'scratch.db'}")
            path = migrations.revision(args.message, engine)
            engine.dispose()
        print(f"wrote {path}: read it, then run the migration tests")
        return 0

    if args.url is None:
        from chaptering.config import get_settings

        args.url = get_settings().feedback_db
    engine = create_engine(args.url)
    try:
        if args.command == "upgrade":
            print(f"at {migrations.upgrade(engine)}")
        elif args.command == "current":
            with engine.connect() as conn:
                print(f"database: {migrations.current(conn)}  newest: {migrations.head()}")
        elif args.command == "check":
            diffs = migrations.diff(engine)
            for d in diffs:
                print(d)
            return 1 if diffs else 0
        else:
            print(f"wrote {migrations.revision(args.message, engine)}")
    finally:
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
