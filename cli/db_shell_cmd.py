"""`walrewind db shell NAME [SQL]` — apsw's SQL shell on a named database (sources read-only)."""

from __future__ import annotations

import sys

import click

from ..engine.workspace import databases
from ..engine.workspace.dump import dump
from .common import config_option, friendly, get_config, open_catalog


def _make_shell(conn, name: str, readonly: bool):
    import apsw
    import apsw.shell

    class Shell(apsw.shell.Shell):
        errors = 0

        def command_dump(self, cmd):
            """dump ?TABLE? [TABLE...]: the database as SQL, in the sqlite3 shell's shape (no DROP TABLE),
            so piping it into another database never wipes rows: one transaction that fails whole
            if a table already exists.  TABLE is a LIKE pattern."""
            dump(self.db, lambda text: self.write(self.stdout, text), list(cmd) or None)

        def handle_exception(self):
            exc = sys.exc_info()[1]
            if isinstance(exc, BrokenPipeError):
                raise exc  # the reader went away (`| head`): main() ends quietly
            if not isinstance(exc, SystemExit):
                Shell.errors += 1
            try:
                return super().handle_exception()
            finally:
                if readonly and isinstance(exc, apsw.ReadOnlyError):
                    self.write(self.stderr, f"({name} is a replicated source database and is opened read-only; "
                                            f"to experiment, make a copy: walrewind db create COPY --from-db {name})\n")

    shell = Shell(stdin=sys.stdin, stdout=sys.stdout, stderr=sys.stderr, db=conn)
    shell.prompt = f"{name}{' (read-only)' if readonly else ''}> "
    shell.moreprompt = " " * (len(shell.prompt) - 5) + "...> "
    return shell


@click.command("shell", short_help="SQL shell on a database (read-only for sources).")
@click.argument("name")
@click.argument("sql", required=False)
@config_option
@friendly
def shell_command(name, sql):
    """Open an SQL shell on NAME (apsw's shell; `.help` lists dot commands).

    With SQL (one statement or dot command) run just that; with input on stdin, run it as a script:

    \b
    walrewind db shell before-delete "SELECT count(*) FROM notes"
    walrewind db shell before-delete .dump > dump.sql    (sqlite3's shape: no DROP TABLE)
    walrewind db shell before-delete < queries.sql

    A replicated (source) database is opened read-only.
    """
    import apsw

    config = get_config()
    db = databases.existing(config, open_catalog(config), name)
    readonly = db.readonly
    conn = databases.open_for_shell(db)
    shell = _make_shell(conn, name, readonly)
    try:
        if sql is not None:
            try:
                shell.process_complete_line(sql)
            except Exception:
                shell.handle_exception()
        else:
            if shell.interactive:
                intro = (f"walrewind db shell: {name} ({db.path}{', read-only' if readonly else ''})\n"
                         f"SQLite {apsw.sqlite_lib_version()}. Enter \".help\" for dot commands, Ctrl-D to quit.\n")
            else:
                intro = ""
            shell.cmdloop(intro=intro)
        sys.stdout.flush()
    finally:
        shell.db = (None, None)  # closes the connection
    if shell.errors:
        sys.exit(1)
